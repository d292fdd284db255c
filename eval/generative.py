"""MaMMUT generative zero-shot classification and captioning.

Generative scoring: the class of an image is the prompt its captioning pass finds most likely. For class c with
prompt tokens ``SOT t_1 .. t_n EOT`` the score is ``sum_j log p(t_j | SOT, t_<j, image)`` over the text tokens and
the EOT (so the caption is scored as a whole caption that ends there). ``generative_acc1``/``_acc5`` rank classes by
the sum; ``generative_mean_acc1`` by the mean per scored token (which does not favour short class names).
One template per class (``generative_template``): every class costs one decoder pass per image.

Batched over classes: the image is encoded once per batch, its cross-attention memory repeated for a chunk of
classes at a time inside one ``lax.map``, and only the prompt's own length (not the whole context) is decoded, so
1000 classes stay practical. The chunk size keeps the vocabulary logits of one chunk under ``LOGITS_BUDGET_BYTES``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vlscale.errors import UserError
from vlscale.eval import batches, nonfinite
from vlscale.eval.prompts import Prompts, fill, openai_templates

LOGITS_BUDGET_BYTES = 512 * 2**20  # vocabulary logits of one class chunk, whole batch (float32)
GENERATIVE_BATCH = 32  # images per batch: every image decodes every class, so batches are smaller than contrastive
PREFERRED_TEMPLATE = "a photo of a {c}."


def require_generative(em, what: str = "--task generative", instead: str = " (use --task zeroshot)") -> None:
    """``what`` (the flag or command the user gave) needs MaMMUT; ``instead`` says what works with this model."""
    if em.family != "mammut":
        raise UserError(f"{what} needs a captioning model (MaMMUT); {em.model_name} is a {em.family} model{instead}")


def generative_template(prompts: Prompts) -> str:
    """The template used for scoring: "a photo of a {c}." for OpenAI's 80, else the dataset's first."""
    if set(prompts.templates) == set(openai_templates()):
        return PREFERRED_TEMPLATE
    return prompts.templates[0]


def class_tokens(prompts: Prompts, context_length: int, template: str | None = None) -> np.ndarray:
    """Prompt tokens [classes, L]: SOT ... EOT, zero-padded to the longest prompt (+ room), at most the context."""
    from vlscale.models.tokenizer import get_tokenizer

    template = template or generative_template(prompts)
    tokens = get_tokenizer(context_length)([fill(template, c) for c in prompts.classnames])
    used = int((tokens != 0).sum(axis=1).max())
    length = min(context_length, -(-used // 8) * 8)  # a multiple of 8: fewer distinct compiled shapes
    return tokens[:, :length]


def class_chunk(batch_size: int, length: int, vocab: int) -> int:
    per_class = batch_size * max(length - 1, 1) * vocab * 4
    return max(1, LOGITS_BUDGET_BYTES // per_class)


@functools.lru_cache(maxsize=None)
def _score_fn(config, dtype: str, chunk: int):
    from vlscale.eval.encoders import _model

    model = _model(config, dtype)

    def class_scores(params, images, tokens):
        """Summed log-likelihood [B, C] of every class prompt given every image, and scored tokens per class [C]."""
        _, memory = model.apply({"params": params}, images, method="image_memory")
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        mask = (targets != 0).astype(jnp.float32)
        n_cls, length = inputs.shape
        b = memory.shape[0]

        def one(args):
            inp, tgt, m = args  # [chunk, L-1]
            mem = jnp.repeat(memory, chunk, axis=0)  # image-major, so the batch sharding carries over
            toks = jnp.tile(inp, (b, 1))
            logits = model.apply({"params": params}, mem, toks, method="caption_logits_from_memory")
            logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            tok = jnp.take_along_axis(logp, jnp.tile(tgt, (b, 1))[..., None], axis=-1)[..., 0]
            return jnp.sum(tok * jnp.tile(m, (b, 1)), axis=-1).reshape(b, chunk)

        split = lambda x: x.reshape(n_cls // chunk, chunk, length)  # noqa: E731
        sums = jax.lax.map(one, (split(inputs), split(targets), split(mask)))  # [C/chunk, B, chunk]
        return jnp.transpose(sums, (1, 0, 2)).reshape(b, n_cls), jnp.sum(mask, axis=-1)

    def classify(params, images, labels, tokens, class_valid):
        from vlscale.eval.zeroshot import all_finite, label_rank, top1

        sums, counts = class_scores(params, images, tokens)
        finite = all_finite(sums, class_valid[None, :])  # before the padding classes are set to -inf
        sums = jnp.where(class_valid[None, :], sums, -jnp.inf)
        means = jnp.where(class_valid[None, :], sums / jnp.maximum(counts, 1.0)[None, :], -jnp.inf)
        return {"rank_sum": label_rank(sums, labels), "rank_mean": label_rank(means, labels),
                "pred_sum": top1(sums), "pred_mean": top1(means), "finite": finite}

    return jax.jit(class_scores), jax.jit(classify)


def _padded_tokens(tokens: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    pad = (-len(tokens)) % chunk
    valid = np.concatenate([np.ones(len(tokens), bool), np.zeros(pad, bool)])
    padded = np.concatenate([tokens, np.repeat(tokens[:1], pad, axis=0)]) if pad else tokens
    return padded, valid


def scores(em, images: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Summed log-likelihoods [N, C] of each class prompt for preprocessed ``images`` (one batch, for tests)."""
    require_generative(em)
    chunk = min(class_chunk(len(images), tokens.shape[1], em.config.text.vocab_size), len(tokens))
    padded, _ = _padded_tokens(tokens, chunk)
    fn, _ = _score_fn(em.config, em.dtype, chunk)
    with em.context():
        sums, _ = fn(em.params, em.replicated(images), em.replicated(padded))
    return np.asarray(sums)[:, : len(tokens)]


def evaluate(em, dataset, prompts: Prompts, batch_size: int = GENERATIVE_BATCH, template: str | None = None) -> dict:
    """``{"metrics": {generative_acc1, generative_acc5, generative_mean_acc1}, ...}`` for one classification set."""
    from vlscale.eval.zeroshot import TOPK

    require_generative(em)
    tokens = class_tokens(prompts, em.config.context_length, template)
    chunk = min(class_chunk(batch_size, tokens.shape[1], em.config.text.vocab_size), len(tokens))
    padded, valid = _padded_tokens(tokens, chunk)
    _, step = _score_fn(em.config, em.dtype, chunk)
    tok, cls_valid = em.replicated(padded), em.replicated(valid)
    with em.context():
        out = batches.run_batched(lambda b: step(em.params, b["image"], b["label"], tok, cls_valid),
                                  dataset.loader(em.config.image_size), dataset.num_images, batch_size, em.mesh,
                                  progress=f"generative {dataset.name}")
    ok = out["valid"]
    if not ok.any():
        raise UserError(f"dataset {dataset.name}: no image could be decoded")
    nonfinite.check_rows(out["finite"][ok], "caption log-likelihoods", "images")
    metrics = {f"generative_acc{k}": float(np.mean(out["rank_sum"][ok] < k)) for k in TOPK}
    metrics["generative_mean_acc1"] = float(np.mean(out["rank_mean"][ok] < 1))
    return {"metrics": metrics, "skipped_images": int(np.sum(~ok)), "num_images": int(ok.sum()),
            "template": template or generative_template(prompts)}


def caption_images(em, images: np.ndarray, method: str = "beam_search", **options) -> list[str]:
    """Captions of preprocessed ``images`` [N, S, S, 3] with greedy or beam search on the KV cache."""
    from vlscale.models import generate

    require_generative(em)
    options.setdefault("seq_len", min(generate.SEQ_LEN, em.config.context_length))
    options.setdefault("min_seq_len", min(generate.MIN_SEQ_LEN, options["seq_len"] - 1))
    if method not in ("beam_search", "greedy"):
        raise UserError(f"--method {method!r}: use beam_search or greedy")
    try:
        with jax.default_matmul_precision("highest" if em.dtype == "float32" else "default"):
            # The images go in replicated on the model's mesh (every process passes the same batch) and the tokens
            # come back whole on every host: a mesh that spans processes works like one that does not.
            tokens = generate.generate(em.module, em.params, em.replicated(images), generation_type=method,
                                       **options)
    except ValueError as e:
        raise UserError(str(e)) from None
    from vlscale.eval.batches import to_host

    return generate.decode_captions(to_host(tokens))
