"""CLIP text tokenizer with ids identical to open_clip's ``SimpleTokenizer`` (reference-models.md §5).

Every checkpoint trained in the paper saw text through open_clip's byte-level BPE tokenizer, so any
difference in ids (a cleaning step, a regex flag, truncation) silently changes what a model reads. This
module reproduces that tokenizer from its specification:

1. clean: ``ftfy.fix_text`` → ``html.unescape`` twice → collapse whitespace (which also strips) → lower-case;
2. pre-tokenise with the CLIP regex (``regex`` module, IGNORECASE);
3. map each piece's UTF-8 bytes to printable characters (GPT-2 byte table) and apply the lowest-rank-first
   BPE merge loop with a ``</w>`` end-of-word marker on the last symbol;
4. ``[SOT] + ids + [EOT]``; longer than the context → cut to the context and put EOT in the last slot;
   zero-pad.

Speed matters because the data pipeline tokenises every caption of every step: ids are cached per
space-separated word and per pre-token (bounded, approximately least-recently-used), ftfy is skipped for
text it provably leaves unchanged (printable ASCII without ``&``), and the batch path stops once a
caption already fills the context. ``bench/tokenizer_speed.py`` measures the gain against open_clip.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import re as stdlib_re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import ftfy
import numpy as np
import regex

SOT_ID = 49406  # '<start_of_text>': after 512 byte tokens and 48,894 merges (reference §5)
EOT_ID = 49407  # '<end_of_text>'
PAD_ID = 0  # open_clip pads with zeros; id 0 is also the byte token '!' (the models never mask by it)
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77  # every CLIP and MaMMUT model in the paper

BPE_ASSET = "bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
NUM_MERGES = 49152 - 256 - 2  # merges used from the file: lines 1 … 48,894 (SimpleTokenizer L145)
END_OF_WORD = "</w>"
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")

# The CLIP pre-tokeniser: special tokens, English clitics, runs of letters, single digits, runs of
# other non-space characters. IGNORECASE matters beyond ASCII (e.g. "'ſ" matches "'s").
PRETOKEN_PATTERN = (
    "|".join(SPECIAL_TOKENS) + r"|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
_PRETOKEN_RE = regex.compile(PRETOKEN_PATTERN, regex.IGNORECASE)

# ASCII text that ftfy and html.unescape return unchanged: no '&' (entities) and no control characters
# other than tab/newline (ftfy removes or rewrites those). Guarded by a test against ftfy itself.
_NEEDS_FTFY_IN_ASCII = stdlib_re.compile(r"[&\x00-\x08\x0b-\x1f\x7f]")

DEFAULT_CACHE_SIZE = 100_000  # entries per cache (words, pre-tokens): about 15 MB each when full (measured)


def byte_symbols() -> list[str]:
    """The GPT-2 byte → character table: entry b is the printable character that stands for byte b.

    Bytes that are already visible, non-space Latin-1 characters stand for themselves; the remaining 68
    (controls, space, NBSP, soft hyphen, …) take the code points 256, 257, … in byte order, so BPE
    never sees whitespace or control characters.
    """
    visible = set(range(ord("!"), ord("~") + 1))
    visible |= set(range(ord("¡"), ord("¬") + 1))
    visible |= set(range(ord("®"), ord("ÿ") + 1))
    symbols, next_free = [], 256
    for b in range(256):
        if b in visible:
            symbols.append(chr(b))
        else:
            symbols.append(chr(next_free))
            next_free += 1
    return symbols


@dataclass(frozen=True)
class BpeTables:
    """Vocabulary and merge ranks read from the shipped merges file (shared by all tokenizers)."""

    ranks: dict[tuple[str, str], int]  # merge pair → priority (lower merges first)
    token_to_id: dict[str, int]
    id_to_bytes: tuple[bytes, ...]  # id → the UTF-8 bytes it stands for ('</w>' kept literally)
    byte_translation: dict[int, str]  # latin-1 code point of a byte → its BPE symbol


def read_merges() -> list[tuple[str, str]]:
    """The 48,894 merges shipped in ``vlscale/models/assets`` (header line skipped)."""
    raw = importlib.resources.files("vlscale.models").joinpath("assets", BPE_ASSET).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
    merges = []
    for line in lines:
        first, second = line.split()
        merges.append((first, second))
    return merges


@functools.cache
def bpe_tables() -> BpeTables:
    symbols = byte_symbols()
    merges = read_merges()
    # Ids follow the byte characters' code points, not byte order: visible bytes first (so '!' is id 0),
    # then the 68 remapped ones; then the same with '</w>', then one token per merge, then the specials.
    base = sorted(symbols)
    vocab = base + [s + END_OF_WORD for s in base] + [a + b for a, b in merges] + list(SPECIAL_TOKENS)
    if len(vocab) != VOCAB_SIZE or len(set(vocab)) != VOCAB_SIZE:
        raise RuntimeError(f"{BPE_ASSET} does not give {VOCAB_SIZE} distinct tokens; the asset is corrupt")
    symbol_to_byte = {s: b for b, s in enumerate(symbols)}
    id_to_bytes = tuple(bytes(symbol_to_byte[c] for c in token) for token in vocab)
    return BpeTables(
        ranks={pair: rank for rank, pair in enumerate(merges)},
        token_to_id={token: i for i, token in enumerate(vocab)},
        id_to_bytes=id_to_bytes,
        byte_translation={b: s for b, s in enumerate(symbols)},
    )


def is_plain_ascii(text: str) -> bool:
    """True when ftfy and html.unescape would leave ``text`` unchanged, so cleaning can skip them."""
    return text.isascii() and not _NEEDS_FTFY_IN_ASCII.search(text)


def clean_text(text: str) -> str:
    """open_clip's default 'lower' cleaning: ftfy, html-unescape twice, collapse whitespace, lower-case."""
    if not isinstance(text, str):
        raise TypeError(f"tokenizer input must be str, got {type(text).__name__}")
    if not is_plain_ascii(text):
        text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text))
    # str.split() and str.strip() use the same whitespace set, so the join also strips.
    return " ".join(text.split()).lower()


def cleaned_words(text: str) -> list[str]:
    """``clean_text(text).split()``, without building the cleaned string for plain ASCII text."""
    if isinstance(text, str) and is_plain_ascii(text):
        return text.lower().split()
    # Cleaning leaves single spaces as the only whitespace (lower() creates none), so split() is exact.
    return clean_text(text).split()


def pretokenize(cleaned: str) -> list[str]:
    """Splits cleaned text into the pieces BPE works on (digits one by one)."""
    return _PRETOKEN_RE.findall(cleaned)


def bpe_merge(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Applies merges lowest rank first; each round merges every non-overlapping occurrence left to right."""
    while len(symbols) > 1:
        best_rank, best_pair = None, None
        for pair in zip(symbols, symbols[1:]):
            rank = ranks.get(pair)
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_pair = rank, pair
        if best_pair is None:
            break
        first, second = best_pair
        merged, out, i, n = first + second, [], 0, len(symbols)
        while i < n:
            if symbols[i] == first and i + 1 < n and symbols[i + 1] == second:
                out.append(merged)
                i += 2
            else:
                out.append(symbols[i])
                i += 1
        symbols = out
    return symbols


class GenerationalCache:
    """A bounded map that approximates LRU at the cost of a dict lookup.

    New entries go into ``recent``; when it holds ``capacity // 2`` entries it becomes ``older`` (the
    previous ``older`` is dropped) and a new ``recent`` starts. A hit in ``older`` is copied back into
    ``recent``, so frequently used words survive every turnover. Only rebinding, never iterating or
    clearing in place, so readers in other threads stay safe.
    """

    __slots__ = ("half", "recent", "older")

    def __init__(self, capacity: int):
        self.half = max(1, capacity // 2)
        self.recent: dict = {}
        self.older: dict = {}

    def __len__(self) -> int:
        return len(self.recent) + len(self.older)

    def get_older(self, key):
        """Looks in the older generation (after a miss in ``recent``), promoting a hit."""
        value = self.older.get(key)
        if value is not None:
            self.put(key, value)
        return value

    def put(self, key, value) -> None:
        if len(self.recent) >= self.half:
            self.older, self.recent = self.recent, {}
        self.recent[key] = value


class Tokenizer:
    """open_clip-identical CLIP tokenizer.

    ``encode(text)`` gives the BPE ids without SOT/EOT; calling the tokenizer on a string or a batch of
    strings gives the padded ``int32 [N, context_length]`` array the models consume. Instances are
    cheap (the merge tables are shared) and pickle without their cache, so data workers can each hold one.
    """

    def __init__(self, context_length: int = CONTEXT_LENGTH, cache_size: int = DEFAULT_CACHE_SIZE):
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}")
        self.context_length = int(context_length)
        self.cache_size = int(cache_size)
        tables = bpe_tables()
        self._ranks = tables.ranks
        self._token_to_id = tables.token_to_id
        self._id_to_bytes = tables.id_to_bytes
        self._byte_translation = tables.byte_translation
        # open_clip seeds its BPE cache with the special tokens, which is how a literal "<start_of_text>"
        # inside a caption becomes id 49406 instead of BPE pieces; here that rule lives outside the cache.
        self._special_ids = {token: (self._token_to_id[token],) for token in SPECIAL_TOKENS}
        self._piece_cache = GenerationalCache(self.cache_size)
        self._word_cache = GenerationalCache(self.cache_size)

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def __reduce__(self):
        return (type(self), (self.context_length, self.cache_size))

    def _piece_ids(self, piece: str) -> tuple[int, ...]:
        """Ids of one pre-token (cached): byte-level symbols, BPE, vocabulary lookup."""
        cache = self._piece_cache
        ids = cache.recent.get(piece) or cache.get_older(piece)
        if ids is not None:
            return ids
        ids = self._special_ids.get(piece)
        if ids is None:
            word = piece.encode("utf-8").decode("latin-1").translate(self._byte_translation)
            symbols = list(word)
            symbols[-1] += END_OF_WORD
            ids = tuple(self._token_to_id[s] for s in bpe_merge(symbols, self._ranks))
        cache.put(piece, ids)
        return ids

    def _word_ids(self, word: str) -> tuple[int, ...]:
        """Ids of one space-separated word of cleaned text (cached), e.g. "dog," → ids of "dog", ",".

        Exact because no pre-token contains whitespace, so pre-tokenising word by word gives the same
        pieces as the whole text; and a warm cache skips the regex for most words.
        """
        cache = self._word_cache
        ids = cache.recent.get(word) or cache.get_older(word)
        if ids is None:
            ids = tuple(i for piece in _PRETOKEN_RE.findall(word) for i in self._piece_ids(piece))
            cache.put(word, ids)
        return ids

    def _encode_words(self, words: list[str], limit: int | None) -> list[int]:
        ids: list[int] = []
        for word in words:
            ids.extend(self._word_ids(word))
            if limit is not None and len(ids) >= limit:
                break
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without SOT/EOT and without truncation."""
        return self._encode_words(cleaned_words(text), None)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """Token ids ``int32 [N, context_length]`` exactly as ``open_clip.tokenize`` gives them.

        A falsy ``context_length`` (None or 0) means this tokenizer's own, as in open_clip.
        """
        if isinstance(texts, str):
            texts = [texts]
        ctx = context_length or self.context_length
        if ctx < 1:
            raise ValueError(f"context_length must be >= 1, got {ctx}")
        out = np.zeros((len(texts), ctx), dtype=np.int32)
        for row, text in enumerate(texts):
            # Only the first ctx ids can survive truncation, so BPE stops there.
            tokens = [SOT_ID, *self._encode_words(cleaned_words(text), ctx), EOT_ID]
            if len(tokens) > ctx:
                tokens = tokens[:ctx]
                tokens[-1] = EOT_ID
            out[row, : len(tokens)] = tokens
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids, as open_clip decodes it: ``</w>`` becomes a space, padding is kept.

        Bytes that are not valid UTF-8 (e.g. half a multi-byte character after truncation) become U+FFFD.
        """
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < VOCAB_SIZE]
        if bad:
            raise ValueError(f"token ids outside [0, {VOCAB_SIZE}): {bad[:5]}")
        table = self._id_to_bytes
        data = b"".join(table[i] for i in ids)
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")


def get_tokenizer(context_length: int = CONTEXT_LENGTH) -> Tokenizer:
    """A shared tokenizer per context length (its BPE cache is shared by every caller in the process)."""
    return _shared_tokenizer(int(context_length))


@functools.cache
def _shared_tokenizer(context_length: int) -> Tokenizer:
    return Tokenizer(context_length)


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """``open_clip.tokenize`` as numpy: ids ``int32 [N, context_length]`` from the shared tokenizer."""
    return get_tokenizer(context_length)(texts)
