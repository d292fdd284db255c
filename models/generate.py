"""Caption generation for MaMMUT: greedy and beam search on a KV cache, compiled once per setting.

The fork (``generation_utils.py``, reference §2.7) re-runs the decoder on the whole prefix at every step. Here
the image is encoded once, every cross-attention block projects the image keys/values once, and each step
feeds one token per sequence through the cached self-attention (``MaMMUT.decode_text``); the loop is a
``lax.while_loop`` inside one jitted function, stopping when every sequence (or beam set) is done.

Semantics follow the fork's defaults where they are well defined: start with SOT (49406), stop at EOS
(49407), pad finished sequences with 0, ``seq_len`` 30 tokens including SOT, EOS forbidden while the sequence
is shorter than ``min_seq_len`` (HF MinLengthLogitsProcessor), HF's repetition penalty (1.0 = off), and EOS
forced into the last slot (as the fork's sampling loop does) so every output ends with EOS.

Beam search is standard HF-style search over ``num_beams`` beams with scores = summed log-probabilities
(``score="log_prob"``) and ``length_penalty`` 0 (none) by default; finished hypotheses enter the pool only from
the top ``num_beams`` candidates, and a batch row stops when no live beam can beat its worst finished one.
Two documented differences from the fork: the fork splits its 6 beams into 3 groups with no diversity penalty
(each group runs the same 2-beam search) and sums raw logits instead of log-probabilities; pass
``num_beams=2`` and ``score="logit"`` to mimic it. The fork's HF scorer also divides by length
(``length_penalty=1.0``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vlscale.models.config import ModelConfig, RuntimeOptions

# open_clip_mammut generation_utils.Generator.generate defaults (reference §2.7).
SOT_ID = 49406
EOS_ID = 49407
PAD_ID = 0
SEQ_LEN = 30
MIN_SEQ_LEN = 5
NUM_BEAMS = 6


@dataclass(frozen=True)
class GenerationOptions:
    """How to decode. Shapes and token ids are compiled in; the numeric knobs (``min_seq_len``,
    ``repetition_penalty``, ``length_penalty``) are runtime values, so changing them does not recompile."""

    seq_len: int = SEQ_LEN
    min_seq_len: int = MIN_SEQ_LEN
    num_beams: int = NUM_BEAMS
    repetition_penalty: float = 1.0
    length_penalty: float = 0.0
    score: Literal["log_prob", "logit"] = "log_prob"
    sot_id: int = SOT_ID
    eos_id: int = EOS_ID
    pad_id: int = PAD_ID

    def compiled_part(self) -> "GenerationOptions":
        """The options with the runtime knobs reset: the cache key of the compiled search."""
        return replace(self, min_seq_len=0, repetition_penalty=1.0, length_penalty=0.0)

    def knobs(self) -> dict:
        return {"min_seq_len": jnp.int32(self.min_seq_len),
                "repetition_penalty": jnp.float32(self.repetition_penalty),
                "length_penalty": jnp.float32(self.length_penalty)}

    def validate(self, config: ModelConfig) -> None:
        if not 1 < self.seq_len <= config.text.context_length:
            raise ValueError(f"seq_len {self.seq_len} must be in 2..{config.text.context_length} (the context)")
        if self.min_seq_len >= self.seq_len:
            raise ValueError(f"min_seq_len {self.min_seq_len} must be below seq_len {self.seq_len}")
        if not 1 <= self.num_beams <= max_num_beams(config):
            raise ValueError(f"num_beams must be in 1..{max_num_beams(config)}, got {self.num_beams}")
        if self.score not in ("log_prob", "logit"):
            raise ValueError(f"score {self.score!r}: use 'log_prob' or 'logit'")


def max_num_beams(config: ModelConfig) -> int:
    """The most beams one step can rank: beams x vocabulary candidates go through ``lax.top_k``, whose indices are
    int32; and more beams than tokens cannot all be filled from the one live beam of the first step."""
    vocab = config.text.vocab_size
    return max(1, min(vocab, (2**31 - 1) // vocab))


# --- pieces shared by both searches ----------------------------------------------------------------------------------


def process_logits(logits, cur_len, seen, knobs: dict, eos_id: int = EOS_ID):
    """HF RepetitionPenalty (seen ids: positive logits / p, negative * p; p = 1 is exact identity) then
    MinLength (no EOS before ``min_seq_len`` tokens, SOT counted). ``logits`` [N, V] float32, ``seen`` [N, V]."""
    p = knobs["repetition_penalty"]
    logits = jnp.where(seen, jnp.where(logits < 0, logits * p, logits / p), logits)
    is_eos = jnp.arange(logits.shape[-1]) == eos_id
    return jnp.where(is_eos & (cur_len < knobs["min_seq_len"]), -jnp.inf, logits)


def step_scores(processed, opts: GenerationOptions):
    """What a search adds per token: log-probabilities (default) or the fork's raw logits."""
    return jax.nn.log_softmax(processed, axis=-1) if opts.score == "log_prob" else processed


def _decode_model(config: ModelConfig, runtime: RuntimeOptions):
    from vlscale.models.mammut import MaMMUT

    # Decoding runs the per-block layout; scanned parameters are unstacked inside the jitted function.
    return MaMMUT(config, replace(runtime, scan_layers=False, remat="none"))


def _per_block_params(params):
    from vlscale.models import layer_layout, mammut

    if "layer_groups" in params["text"] or layer_layout.is_stacked(params):
        return layer_layout.unstack_layers(mammut.to_checkpoint_layout(params))
    return params


def _start(model, params, images, copies: int, seq_len: int):
    """Encodes the images once and builds the decode cache (cross keys/values included) for ``copies`` each."""
    from vlscale.models.mammut import MaMMUT

    _, memory = model.apply({"params": params}, images, method=MaMMUT.image_memory)
    memory = jnp.repeat(memory, copies, axis=0)
    dummy = jnp.zeros((memory.shape[0], seq_len), jnp.int32)
    _, variables = model.apply({"params": params}, dummy, memory, lm_head=False, method=MaMMUT.decode_text,
                               mutable=["cache"])
    return variables["cache"]


def _step(model, params, cache, tokens):
    """Feeds one token per sequence; returns float32 next-token logits [N, V] and the advanced cache."""
    from vlscale.models.mammut import MaMMUT

    logits, variables = model.apply({"params": params, "cache": cache}, tokens[:, None], None,
                                    method=MaMMUT.decode_text, mutable=["cache"])
    return logits[:, 0].astype(jnp.float32), variables["cache"]


def _reorder_self_attention_cache(cache, flat_source):
    """Moves each beam's self-attention keys/values to its new slot. The cross-attention keys/values are the
    same for all beams of an image (beams never change image), so they stay where they are."""

    moved = []

    def reorder(path, c):
        if getattr(path[-1], "key", None) in ("cached_key", "cached_value"):
            moved.append(path)
            return c[flat_source]
        return c

    cache = jax.tree_util.tree_map_with_path(reorder, cache)
    if not moved:  # the layers' cache names changed: fail loudly rather than decode with stale keys
        raise RuntimeError("no cached_key/cached_value in the decode cache; update _reorder_self_attention_cache")
    return cache


# --- greedy ----------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _greedy_fn(config: ModelConfig, runtime: RuntimeOptions, opts: GenerationOptions):
    model = _decode_model(config, runtime)
    S = opts.seq_len

    def run(params, images, knobs):
        params = _per_block_params(params)
        batch = images.shape[0]
        rows = jnp.arange(batch)
        cache = _start(model, params, images, 1, S)
        seqs = jnp.full((batch, S), opts.pad_id, jnp.int32).at[:, 0].set(opts.sot_id)
        seen = jnp.zeros((batch, config.text.vocab_size), bool).at[:, opts.sot_id].set(True)
        state = (jnp.int32(1), seqs, cache, jnp.zeros(batch, bool), jnp.zeros(batch, jnp.float32), seen)

        def cond(state):
            t, _, _, finished, _, _ = state
            return (t < S) & ~jnp.all(finished)

        def body(state):
            t, seqs, cache, finished, scores, seen = state
            logits, cache = _step(model, params, cache, seqs[:, t - 1])
            processed = process_logits(logits, t, seen, knobs, opts.eos_id)
            token = jnp.argmax(processed, axis=-1).astype(jnp.int32)
            token = jnp.where(t == S - 1, opts.eos_id, token)
            token = jnp.where(finished, opts.pad_id, token)
            gained = step_scores(processed, opts)[rows, token]
            scores = scores + jnp.where(finished, 0.0, gained)
            seqs = seqs.at[:, t].set(token)
            seen = seen.at[rows, token].set(True)
            return t + 1, seqs, cache, finished | (token == opts.eos_id), scores, seen

        _, seqs, _, _, scores, _ = lax.while_loop(cond, body, state)
        return seqs, scores

    return jax.jit(run)


def greedy_search(model, params, images, **options) -> tuple[jax.Array, jax.Array]:
    """Greedy captions: (tokens int32 [B, seq_len] starting with SOT, ending with EOS then pads; summed scores [B]).

    ``options``: fields of ``GenerationOptions`` (``seq_len``, ``min_seq_len``, ``repetition_penalty``, ...).
    """
    opts = GenerationOptions(**options)
    opts.validate(model.config)
    return _greedy_fn(model.config, model.runtime, opts.compiled_part())(params, images, opts.knobs())


# --- beam search -----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _beam_fn(config: ModelConfig, runtime: RuntimeOptions, opts: GenerationOptions):
    model = _decode_model(config, runtime)
    S, K, V = opts.seq_len, opts.num_beams, config.text.vocab_size
    neg_inf = jnp.float32(-jnp.inf)

    def run(params, images, knobs):
        def normalised(score, length):
            return score / (length.astype(jnp.float32) ** knobs["length_penalty"])

        params = _per_block_params(params)
        batch = images.shape[0]
        rows = jnp.arange(batch)[:, None]
        cache = _start(model, params, images, K, S)
        alive = jnp.full((batch, K, S), opts.pad_id, jnp.int32).at[:, :, 0].set(opts.sot_id)
        # Only beam 0 is live at first, so the first step expands one copy of the prefix.
        alive_scores = jnp.full((batch, K), neg_inf).at[:, 0].set(0.0)
        seen = jnp.zeros((batch, K, V), bool).at[:, :, opts.sot_id].set(True)
        done_seqs = jnp.full((batch, K, S), opts.pad_id, jnp.int32)
        done_scores = jnp.full((batch, K), neg_inf)
        state = (jnp.int32(1), alive, alive_scores, seen, cache, done_seqs, done_scores)

        def finished_rows(t, alive_scores, done_scores):
            # HF BeamHypotheses.is_done (early_stopping=False): the pool is full and no live beam beats it.
            best_alive = normalised(jnp.max(alive_scores, axis=-1), t)
            return jnp.isfinite(done_scores[:, -1]) & (best_alive <= done_scores[:, -1])

        def cond(state):
            t, _, alive_scores, _, _, _, done_scores = state
            return (t < S) & ~jnp.all(finished_rows(t, alive_scores, done_scores))

        def body(state):
            t, alive, alive_scores, seen, cache, done_seqs, done_scores = state
            logits, cache = _step(model, params, cache, alive[:, :, t - 1].reshape(-1))
            processed = process_logits(logits, t, seen.reshape(batch * K, V), knobs, opts.eos_id)
            gained = step_scores(processed, opts).reshape(batch, K, V)
            gained = jnp.where((t == S - 1) & (jnp.arange(V) != opts.eos_id), neg_inf, gained)
            candidates = (alive_scores[:, :, None] + gained).reshape(batch, K * V)
            top_scores, top_index = lax.top_k(candidates, 2 * K)
            beam, token = top_index // V, (top_index % V).astype(jnp.int32)
            extended = alive[rows, beam].at[:, :, t].set(token)  # [B, 2K, S]
            is_eos = token == opts.eos_id

            # EOS candidates among the best K join the pool of finished hypotheses; keep the best K.
            new_done = jnp.where(is_eos & (jnp.arange(2 * K) < K), normalised(top_scores, t + 1), neg_inf)
            pool_scores = jnp.concatenate([done_scores, new_done], axis=1)
            pool_seqs = jnp.concatenate([done_seqs, extended], axis=1)
            done_scores, keep = lax.top_k(pool_scores, K)
            done_seqs = pool_seqs[rows, keep]

            # The best K non-EOS candidates live on; the cache and the seen-token sets follow their source beam.
            live_scores, pick = lax.top_k(jnp.where(is_eos, neg_inf, top_scores), K)
            source = beam[rows, pick]
            alive = extended[rows, pick]
            seen = seen[rows, source].at[rows, jnp.arange(K)[None, :], token[rows, pick]].set(True)
            flat_source = (jnp.arange(batch)[:, None] * K + source).reshape(-1)
            cache = _reorder_self_attention_cache(cache, flat_source)
            return t + 1, alive, live_scores, seen, cache, done_seqs, done_scores

        _, _, _, _, _, done_seqs, done_scores = lax.while_loop(cond, body, state)
        return done_seqs, done_scores

    return jax.jit(run)


def beam_search(model, params, images, **options) -> tuple[jax.Array, jax.Array]:
    """Beam search: (tokens int32 [B, num_beams, seq_len], scores [B, num_beams]), best hypothesis first.

    Scores are summed step scores divided by ``length ** length_penalty`` (no division by default).
    """
    opts = GenerationOptions(**options)
    opts.validate(model.config)
    return _beam_fn(model.config, model.runtime, opts.compiled_part())(params, images, opts.knobs())


def generate(model, params, images, generation_type: Literal["beam_search", "greedy"] = "beam_search",
             **options) -> jax.Array:
    """The best caption's tokens [B, seq_len] per image (beam search by default, like the fork)."""
    if generation_type == "greedy":
        return greedy_search(model, params, images, **options)[0]
    if generation_type == "beam_search":
        return beam_search(model, params, images, **options)[0][:, 0]
    raise ValueError(f"generation_type {generation_type!r}: use 'beam_search' or 'greedy'")


def decode_captions(tokens, tokenizer=None, sot_id: int = SOT_ID, eos_id: int = EOS_ID) -> list[str]:
    """Text of each row of ``tokens`` [B, L]: drop SOT, cut at the first EOS (the fork README's post-processing)."""
    if tokenizer is None:
        from vlscale.models.tokenizer import get_tokenizer

        tokenizer = get_tokenizer()
    texts = []
    for row in np.asarray(tokens):
        ids: Sequence[int] = [int(i) for i in row]
        if eos_id in ids:
            ids = ids[: ids.index(eos_id)]
        texts.append(tokenizer.decode([i for i in ids if i != sot_id]).strip())
    return texts
