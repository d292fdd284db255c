"""Zero-shot classification as CLIP_benchmark defines it: the classifier and the metrics.

Classifier: for each class, the prompts (class name in every template) are encoded and L2-normalised, averaged
over templates, and renormalised; the columns of ``[embed_dim, classes]`` are the classes. Logits are
``100 * normalised image features @ classifier``.

Metrics: ``acc1``/``acc5`` = fraction of images whose class is among the top 1/5 logits; ``mean_per_class_recall``
= the mean over the classes present in the labels of the fraction of that class's images predicted (top 1) as
that class (sklearn's ``balanced_accuracy_score``, which CLIP_benchmark calls).

Order: the one ``torch.sort(descending=True, stable=True)`` gives, which is CLIP_benchmark's ``topk`` made
deterministic: NaN above +inf above every finite value above -inf, and equal scores (two NaNs, two +infs, exact ties)
in class-index order. ``torch.topk`` orders NaN the same way but leaves equal scores in no documented order.
Evaluation never reports a metric computed from a non-finite score (``vlscale.eval.nonfinite``); the order is defined
for them anyway so that no comparison with NaN silently counts as "not ahead".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vlscale.eval import batches, nonfinite
from vlscale.eval.prompts import Prompts

TOPK = (1, 5)


def ahead_of(scores: jax.Array, own: jax.Array, cols: jax.Array, own_col: jax.Array) -> jax.Array:
    """Whether ``scores`` at column ``cols`` comes before ``own`` at column ``own_col`` in the order above (NaN
    first, then descending, equal scores by column). Broadcasts."""
    nan, own_nan = jnp.isnan(scores), jnp.isnan(own)
    earlier = cols < own_col
    return jnp.where(own_nan, nan & earlier, nan | (scores > own) | ((scores == own) & earlier))


def label_rank(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """0-based rank of each row's ``labels`` entry among its logits, in the order of the module doc."""
    labels = jnp.clip(labels, 0, logits.shape[-1] - 1)  # padding rows carry -1; their result is masked later
    own = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    cols = jnp.arange(logits.shape[-1])[None, :]
    return jnp.sum(ahead_of(logits, own, cols, labels[:, None]), axis=-1).astype(jnp.int32)


def top1(logits: jax.Array) -> jax.Array:
    """The class of rank 0 in the order of the module doc (``argmax``, except that a NaN comes first)."""
    nan = jnp.isnan(logits)
    return jnp.where(nan.any(axis=-1), jnp.argmax(nan, axis=-1), jnp.argmax(logits, axis=-1)).astype(jnp.int32)


def all_finite(x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Per row: every entry finite (entries where ``valid`` [last axis] is False do not count)."""
    ok = jnp.isfinite(x)
    if valid is not None:
        ok = ok | ~valid
    return jnp.all(ok.reshape(ok.shape[0], -1), axis=-1)


def classification_metrics(rank: np.ndarray, pred: np.ndarray, labels: np.ndarray, prefix: str = "") -> dict:
    """acc1, acc5 and mean_per_class_recall from per-image label ranks and top-1 predictions."""
    rank, pred, labels = np.asarray(rank), np.asarray(pred), np.asarray(labels)
    out = {f"{prefix}acc{k}": float(np.mean(rank < k)) for k in TOPK}
    out[f"{prefix}mean_per_class_recall"] = mean_per_class_recall(pred, labels)
    return out


def mean_per_class_recall(pred: np.ndarray, labels: np.ndarray) -> float:
    classes = np.unique(labels)
    return float(np.mean([np.mean(pred[labels == c] == c) for c in classes]))


def encode_texts(em, texts: list[str], batch_size: int, progress: str | None = None) -> np.ndarray:
    """L2-normalised float32 text features [len(texts), embed_dim], batch-sharded like the images."""
    from vlscale.models.tokenizer import get_tokenizer

    tokens = get_tokenizer(em.config.context_length)(texts)
    step = em.fn("encode_text")

    def load(idx):
        rows = np.zeros((len(idx), tokens.shape[1]), np.int32)
        rows[idx >= 0] = tokens[idx[idx >= 0]]
        return {"tokens": rows, "valid": idx >= 0}

    with em.context():
        out = batches.run_batched(lambda b: {"features": step(em.params, b["tokens"])}, load, len(texts),
                                  batch_size, em.mesh, progress=progress)
    return out["features"]


def build_classifier(em, prompts: Prompts, batch_size: int, progress: str | None = "classifier") -> np.ndarray:
    """The zero-shot classifier [embed_dim, classes] (float32): template-averaged, renormalised class embeddings."""
    texts = prompts.texts()
    features = encode_texts(em, texts, batch_size, progress=progress)
    per_class = features.reshape(len(prompts.classnames), len(prompts.templates), -1)
    per_class = per_class / np.linalg.norm(per_class, axis=-1, keepdims=True)
    mean = per_class.mean(axis=1)
    mean = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    nonfinite.check_array(mean, "text features", "classes")
    return np.ascontiguousarray(mean.T.astype(np.float32))


def classify(em, dataset, classifier: np.ndarray, batch_size: int, progress: str | None = None) -> dict:
    """Per-image ``rank`` of the true class and ``pred`` (top 1) for the decodable images, with their labels."""
    step = em.fn("classify")
    weights = em.replicated(classifier)
    with em.context():
        out = batches.run_batched(lambda b: {**step(em.params, b["image"], b["label"], weights), "label": b["label"]},
                                  dataset.loader(em.config.image_size), dataset.num_images, batch_size, em.mesh,
                                  progress=progress)
    ok = out["valid"]
    nonfinite.check_rows(out["finite"][ok], "image features or logits", "images")
    return {"rank": out["rank"][ok], "pred": out["pred"][ok], "label": out["label"][ok],
            "skipped": int(np.sum(~ok))}


def evaluate(em, dataset, prompts: Prompts, batch_size: int, classifier: np.ndarray | None = None) -> dict:
    """``{"metrics": {acc1, acc5, mean_per_class_recall}, "skipped_images", "num_images"}`` for one dataset."""
    if classifier is None:
        classifier = build_classifier(em, prompts, batch_size)
    res = classify(em, dataset, classifier, batch_size, progress=f"zeroshot {dataset.name}")
    if len(res["label"]) == 0:
        from vlscale.errors import UserError

        raise UserError(f"dataset {dataset.name}: no image could be decoded ({res['skipped']} skipped)")
    return {"metrics": classification_metrics(res["rank"], res["pred"], res["label"]),
            "skipped_images": res["skipped"], "num_images": int(len(res["label"]))}
