"""The tokenizer gives open_clip's ids for every input, and decodes like it.

Parity is checked against the installed ``open_clip_torch`` (a test extra) on a corpus of deliberately
awkward strings and a few thousand generated captions, at the paper's context (77) and short ones.
"""

import hashlib
import html
import importlib.resources
import pickle
import random

import ftfy
import numpy as np
import pytest

from vlscale.models import tokenizer as tk

pytestmark = pytest.mark.parity

SHORT_CONTEXTS = (16, 5, 2, 1)

TRICKY_TEXTS = [
    # empty, whitespace and punctuation only
    "", " ", "\t\n  \r\n ", "!!!", "...", "?!?!", "—–-", "@#$%^&*()", "'", "''", "\"\"\"", "_", "~~~~",
    # accents, case, special letters
    "Café naïve résumé Zürich façade", "ÀÉÎÕÜ ß ẞ", "İstanbul DİYARBAKIR", "ǅemal ǈ", "ΟΔΟΣ σοφία",
    "e\u0301 combining acute", "\u212b angstrom sign", "Straße STRASSE", "ﬂubberﬁc ligatures",
    "ＬＯＵＤ　ＮＯＩＳＥＳ fullwidth", "𝐀𝐁𝐂 math bold", "\ue000 private use",
    # CJK and right-to-left scripts
    "東京タワーの写真", "한국어 텍스트 사진", "中文字符和数字123", "مرحبا بالعالم", "שלום עולם",
    "hello مرحبا 123 שלום", "हिन्दी में लिखा", "ไทยภาษา",
    # emoji, ZWJ sequences, flags, skin tones, variation selectors
    "😀😃😄", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "👍🏽 skin tone", "🇩🇪🇫🇷 flags", "❤️ heart", "\ud83d\ude00 pair",
    # html entities, incl. double escaped and unterminated
    "Tom &amp; Jerry", "&amp;amp; double", "&amp;amp;amp; triple", "&lt;b&gt;bold&lt;/b&gt;", "&#39;quoted&#39;",
    "&#x1F600; hex entity", "&nbsp;space", "&amp;lt;tag&amp;gt;", "fish &amp chips", "<b>AT&amp;T</b>",
    "a < b &amp; c > d", "&unknown; entity", "&copy; 2024 &trade;",
    # mojibake that ftfy repairs
    "sÃ³", "âœ” No problems", "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.", "&macr;\\_(ã\x83\x84)_/&macr;",
    "Ã©tÃ© Ã  Paris", "curly “quotes” and ‘single’ it’s",
    # digits and numbers
    "1234567890", "3.14159265358979", "1,000,000 dollars", "in 2024", "٣٤٥ arabic-indic digits", "½ ⅓ ² ³ Ⅻ",
    "9" * 120,
    # contractions in odd case
    "It's", "IT'S", "we'LL", "they'Re", "I'M", "you'D", "she's'", "'s'", "can't won't", "'ſ long s",
    "l'été", "rock 'n' roll", "O'Neill's", "'VE 'll 'd",
    # the special tokens and look-alikes written in the text
    "<start_of_text>", "a <start_of_text> b <end_of_text> c", "<START_OF_TEXT>", "<start_of_text><end_of_text>",
    "<ſtart_of_text>", "<|endoftext|>", "</w>", "word</w>word",
    # whitespace runs, tabs, newlines, unicode spaces, controls
    "a\tb\nc\r\nd", "  lots    of   spaces  ", "\u00a0nbsp\u2003em space\u3000ideographic", "zero\u200bwidth",
    "bell\x07 char", "esc \x1b[31mred\x1b[0m", "null\x00byte", "del\x7f", "form\x0cfeed", "line\u2028sep",
    # long inputs (> 77 tokens, long single words, long unicode)
    "word " * 200, "a" * 500, "é" * 200, "東" * 100, "supercalifragilisticexpialidocious " * 10,
    "a photo of a " + "very " * 100 + "big dog",
    # everyday captions
    "a photo of a cat", "A Photo Of A Dog.", "C++ and C# programming", "e-mail: test@example.com",
    "https://www.example.com/path?q=1&x=2", "#hashtag @mention", "Nikon D850 | 24-70mm f/2.8 @ 1/250s",
]


@pytest.fixture(scope="module")
def reference():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


@pytest.fixture(scope="module")
def tokenizer():
    return tk.get_tokenizer()


def generated_captions(n: int, seed: int = 0) -> list[str]:
    """Web-caption-like strings: templates, mixed case, numbers, units, unicode words, entities, emoji."""
    rnd = random.Random(seed)
    subjects = ["dog", "Cat", "woman", "MAN", "children", "bicycle", "skyscraper", "Golden Retriever",
                "espresso", "Ferris wheel", "café", "piñata", "Zürich tram", "東京タワー", "crème brûlée"]
    adjectives = ["red", "tiny", "HUGE", "old-fashioned", "vintage", "blue-ish", "well-lit", "naïve", "über"]
    places = ["on the beach", "in Paris", "at night", "under the bridge", "near São Paulo", "in the snow"]
    extras = ["", "", "", " #travel", " 😀", " ❤️", " &amp; friends", " (2019)", " - stock photo", " ©2020",
              " | 4K wallpaper", " 3.5\"", " 1920x1080", " it's great", " DON'T miss", " ...", "!!!"]
    templates = [
        "a photo of a {adj} {subj} {place}{extra}",
        "{Subj} {place}, {num} {unit}{extra}",
        "{adj} {subj}{extra}",
        "Buy {num} {adj} {subj}s for ${price}{extra}",
        "{subj} and {subj2} {place} #{num}{extra}",
        "IMG_{num}.JPG {subj}{extra}",
    ]
    out = []
    for _ in range(n):
        subj, subj2 = rnd.choice(subjects), rnd.choice(subjects)
        text = rnd.choice(templates).format(
            adj=rnd.choice(adjectives), subj=subj, Subj=subj.capitalize(), subj2=subj2,
            place=rnd.choice(places), extra=rnd.choice(extras), num=rnd.randint(0, 10**rnd.randint(1, 7)),
            unit=rnd.choice(["kg", "km/h", "mm", "°C", "px"]), price=f"{rnd.uniform(1, 999):.2f}",
        )
        if rnd.random() < 0.1:
            text = text.upper()
        if rnd.random() < 0.1:
            text = "  " + text.replace(" ", rnd.choice(["  ", "\t", "\n"])) + " "
        if rnd.random() < 0.05:
            text = " ".join([text] * rnd.randint(3, 8))  # past the context
        out.append(text)
    return out


def reference_ids(reference, texts, context_length):
    return reference(texts, context_length=context_length).numpy()


def test_merges_asset_is_the_openai_file():
    raw = importlib.resources.files("vlscale.models").joinpath("assets", tk.BPE_ASSET).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == tk.BPE_SHA256


def test_vocabulary_and_ranks_match_open_clip(reference):
    tables = tk.bpe_tables()
    assert tables.token_to_id == reference.encoder
    assert tables.ranks == reference.bpe_ranks
    assert len(tables.token_to_id) == tk.VOCAB_SIZE == reference.vocab_size
    assert (tk.SOT_ID, tk.EOT_ID) == (reference.sot_token_id, reference.eot_token_id)
    assert tables.token_to_id["!"] == tk.PAD_ID  # padding collides with '!', as in open_clip


def test_known_ids_for_a_plain_caption(tokenizer):
    # Golden values: the standard CLIP ids of "a photo of a cat" ('a</w>' 320, 'photo</w>' 1125, ...).
    ids = tokenizer("a photo of a cat")
    assert ids.dtype == np.int32 and ids.shape == (1, 77)
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert not ids[0, 7:].any()


def test_tricky_texts_encode_like_open_clip(tokenizer, reference):
    for text in TRICKY_TEXTS:
        assert tokenizer.encode(text) == reference.encode(text), repr(text)


@pytest.mark.parametrize("context_length", (tk.CONTEXT_LENGTH, *SHORT_CONTEXTS))
def test_tricky_texts_batch_ids_match_open_clip(tokenizer, reference, context_length):
    ours = tokenizer(TRICKY_TEXTS, context_length=context_length)
    theirs = reference_ids(reference, TRICKY_TEXTS, context_length)
    assert ours.shape == (len(TRICKY_TEXTS), context_length)
    mismatched = [TRICKY_TEXTS[i] for i in np.flatnonzero((ours != theirs).any(axis=1))]
    assert not mismatched


@pytest.mark.parametrize("context_length", (tk.CONTEXT_LENGTH, 16))
def test_generated_captions_match_open_clip(tokenizer, reference, context_length):
    captions = generated_captions(2500, seed=context_length)
    ours = tokenizer(captions, context_length=context_length)
    np.testing.assert_array_equal(ours, reference_ids(reference, captions, context_length))
    # Some captions must have been truncated, or truncation went untested.
    assert (ours[:, -1] == tk.EOT_ID).sum() > 10


def random_unicode_strings(n: int, seed: int = 0) -> list[str]:
    """Fuzz inputs: runs of characters from many blocks (scripts, digits, marks, symbols, emoji, spaces,
    controls, html-ish punctuation), surrogates excluded since no str→UTF-8 tokenizer accepts them."""
    rnd = random.Random(seed)
    blocks = [(0x00, 0x7F), (0x80, 0x24F), (0x300, 0x36F), (0x370, 0x52F), (0x590, 0x6FF), (0x900, 0x97F),
              (0x2000, 0x206F), (0x2100, 0x218F), (0x3000, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xACFF),
              (0xFB00, 0xFB4F), (0xFF00, 0xFFEF), (0x1D400, 0x1D4FF), (0x1F300, 0x1F6FF), (0x1F900, 0x1F9FF)]
    extra = list("  &;#<>'\"") + ["&amp;", "'S", "'LL", "\u200d", "\ufe0f", "\n", "<start_of_text>"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rnd.randint(0, 12)):
            if rnd.random() < 0.3:
                parts.append(rnd.choice(extra))
            else:
                lo, hi = rnd.choice(blocks)
                parts.append("".join(chr(rnd.randint(lo, hi)) for _ in range(rnd.randint(1, 6))))
        out.append("".join(parts))
    return out


def test_random_unicode_matches_open_clip(tokenizer, reference):
    texts = random_unicode_strings(1500)
    for context_length in (tk.CONTEXT_LENGTH, 16):
        np.testing.assert_array_equal(tokenizer(texts, context_length), reference_ids(reference, texts, context_length))
    assert tokenizer([]).shape == (0, tk.CONTEXT_LENGTH)


def test_truncation_puts_eot_last(tokenizer):
    ids = tokenizer("word " * 200)[0]
    assert ids[0] == tk.SOT_ID and ids[-1] == tk.EOT_ID
    assert (ids[1:-1] == tokenizer.encode("word")[0]).all()
    short = tokenizer("a photo of a cat", context_length=4)[0]
    assert short.tolist() == [tk.SOT_ID, 320, 1125, tk.EOT_ID]


def test_zero_context_means_default_like_open_clip(tokenizer, reference):
    np.testing.assert_array_equal(tokenizer("a dog", context_length=0), reference_ids(reference, "a dog", 0))
    assert tokenizer("a dog", context_length=0).shape == (1, 77)
    with pytest.raises(ValueError, match="context_length"):
        tokenizer("a dog", context_length=-3)


def test_decode_matches_open_clip(tokenizer, reference):
    rows = tokenizer(TRICKY_TEXTS + generated_captions(200, seed=1))
    for row in rows:
        assert tokenizer.decode(row) == reference.decode(row)
    # Cut inside a multi-byte character: both give U+FFFD for the dangling bytes.
    emoji_ids = tokenizer.encode("😀😃")
    assert tokenizer.decode(emoji_ids[:1]) == reference.decode(emoji_ids[:1])
    all_ids = list(range(tk.VOCAB_SIZE))
    assert tokenizer.decode(all_ids) == reference.decode(all_ids)


def test_decode_round_trips_clean_text(tokenizer):
    text = "a photo of 2 dogs, it's sunny! café 東京 😀"
    # Every pre-token comes back followed by a space ('</w>'): cleaned text, re-spaced at the splits.
    assert tk.pretokenize(tk.clean_text(text)) == ["a", "photo", "of", "2", "dogs", ",", "it", "'s", "sunny", "!",
                                                   "café", "東京", "😀"]
    expected = "a photo of 2 dogs , it 's sunny ! café 東京 😀 "
    assert tokenizer.decode(tokenizer.encode(text)) == expected
    assert tokenizer.decode(tokenizer(text)[0]).startswith("<start_of_text>" + expected + "<end_of_text>!!!")
    with pytest.raises(ValueError, match="outside"):
        tokenizer.decode([5, tk.VOCAB_SIZE])
    with pytest.raises(ValueError, match="outside"):
        tokenizer.decode([-1])


def test_word_by_word_pretokenising_is_exact():
    """The word cache relies on pre-tokens never spanning a space of the cleaned text."""
    for text in TRICKY_TEXTS + generated_captions(300, seed=5):
        cleaned = tk.clean_text(text)
        assert tk.cleaned_words(text) == cleaned.split()
        assert [p for word in cleaned.split() for p in tk.pretokenize(word)] == tk.pretokenize(cleaned)


def test_ascii_fast_path_agrees_with_ftfy():
    """The ftfy skip assumes printable ASCII without '&' (plus tab/newline) is left unchanged."""
    rnd = random.Random(0)
    alphabet = [chr(c) for c in range(0x20, 0x7F) if chr(c) != "&"] + ["\t", "\n", "<", ">", ";", "#"]
    for _ in range(3000):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 60)))
        assert ftfy.fix_text(text) == text
        assert html.unescape(html.unescape(text)) == text
    for needs_ftfy in ["&amp;", "x\x1b[0m", "\x00", "a\rb", "\x7f"]:
        assert tk.clean_text(needs_ftfy) == " ".join(
            html.unescape(html.unescape(ftfy.fix_text(needs_ftfy))).split()).lower()


def test_cache_is_bounded_and_does_not_change_ids(reference):
    small = tk.Tokenizer(cache_size=8)
    # Special tokens in the text must keep their ids after the caches have turned over many times.
    captions = generated_captions(300, seed=3) + ["a <start_of_text> b", "x<end_of_text>y"] * 3
    np.testing.assert_array_equal(small(captions), reference_ids(reference, captions, 77))
    assert len(small._piece_cache) <= 8 and len(small._word_cache) <= 8


def test_generational_cache_keeps_frequent_keys():
    cache = tk.GenerationalCache(capacity=4)
    cache.put("hot", 1)
    for i in range(100):
        cache.put(f"cold{i}", i)
        assert (cache.recent.get("hot") or cache.get_older("hot")) == 1  # used often: never evicted
        assert len(cache) <= 4
    assert cache.recent.get("cold0") is None and cache.get_older("cold0") is None


def test_single_and_batch_paths_agree_and_pickle(tokenizer):
    captions = generated_captions(50, seed=4)
    batch = tokenizer(captions)
    singles = np.concatenate([tokenizer(c) for c in captions])
    np.testing.assert_array_equal(batch, singles)
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone.context_length == tokenizer.context_length
    np.testing.assert_array_equal(clone(captions), batch)


def test_get_tokenizer_is_shared_per_context():
    assert tk.get_tokenizer() is tk.get_tokenizer(77)
    assert tk.get_tokenizer(16).context_length == 16
    assert tk.get_tokenizer(16)("a cat").shape == (1, 16)
    np.testing.assert_array_equal(tk.tokenize(["a cat", "a dog"], 16), tk.get_tokenizer(16)(["a cat", "a dog"]))


def test_non_string_input_is_rejected(tokenizer):
    with pytest.raises(TypeError, match="str"):
        tokenizer([b"bytes caption"])
