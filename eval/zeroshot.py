"""Zero-shot classification as CLIP_benchmark defines it: the classifier and the metrics.

Classifier: for each class, the prompts (class name in every template) are encoded and L2-normalised, averaged
over templates, and renormalised; the columns of ``[embed_dim, classes]`` are the classes. Logits are
``100 * normalised image features @ classifier``.

Metrics: ``acc1``/``acc5`` = fraction of images whose class is among the top 1/5 logits; ``mean_per_class_recall``
= the mean over the classes present in the labels of the fraction of that class's images predicted (top 1) as
that class (sklearn's ``balanced_accuracy_score``, which CLIP_benchmark calls). Ties between logits go to the
lower class index (what a stable descending sort and ``argmax`` do), so results are deterministic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vlscale.eval import batches
from vlscale.eval.prompts import Prompts

TOPK = (1, 5)


def label_rank(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """0-based rank of each row's ``labels`` entry among its logits (ties: lower index ranks first)."""
    labels = jnp.clip(labels, 0, logits.shape[-1] - 1)  # padding rows carry -1; their result is masked later
    own = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    cols = jnp.arange(logits.shape[-1])[None, :]
    ahead = (logits > own) | ((logits == own) & (cols < labels[:, None]))
    return jnp.sum(ahead, axis=-1).astype(jnp.int32)


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
