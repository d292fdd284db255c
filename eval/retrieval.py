"""Image-text retrieval as CLIP_benchmark defines it (COCO Karpathy style, several captions per image).

Scores are ``text features @ image features.T`` (both L2-normalised).
``image_retrieval_recall@k``: text -> image; for each caption, 1 if its image is among the k best-scoring images;
averaged over captions. ``text_retrieval_recall@k``: image -> text; for each image, 1 if ANY of its captions is
among the k best-scoring captions; averaged over images. The order of keys is ``vlscale.eval.zeroshot``'s (NaN
first, then descending, equal scores by index: ``torch.sort(descending=True, stable=True)``, CLIP_benchmark's
``topk`` made deterministic), so the recalls are deterministic. Images that could not be decoded are dropped together
with their captions, and never rank ahead of a valid key whatever its score. Non-finite features stop the evaluation
(``vlscale.eval.nonfinite``).

Ranks are computed on the device in blocks of queries (fixed shapes), so 5k images x 25k captions never needs the
whole score matrix at once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vlscale.errors import UserError
from vlscale.eval import batches, nonfinite

RECALL_K = (1, 5, 10)
QUERY_BLOCK = 256


def _ranks_of_positives(scores, positives, key_valid):
    """Best 0-based rank among each query's positive keys. scores [q, K]; positives [q, P] (-1 = none); keys where
    ``key_valid`` is False are not ranked at all."""
    from vlscale.eval.zeroshot import ahead_of

    pos = jnp.clip(positives, 0, scores.shape[1] - 1)
    own = jnp.take_along_axis(scores, pos, axis=1)  # [q, P]
    cols = jnp.arange(scores.shape[1])[None, None, :]
    ahead = ahead_of(scores[:, None, :], own[:, :, None], cols, pos[:, :, None]) & key_valid[None, None, :]
    rank = jnp.sum(ahead, axis=-1)
    big = jnp.iinfo(jnp.int32).max
    return jnp.min(jnp.where(positives >= 0, rank, big), axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("block",))
def _block_ranks(queries, keys, positives, key_valid, block: int = QUERY_BLOCK):
    """Ranks for all queries, ``block`` at a time (queries padded to a multiple of ``block``)."""
    nq = queries.shape[0]
    q = queries.reshape(nq // block, block, -1)
    p = positives.reshape(nq // block, block, -1)

    def one(args):
        qb, pb = args
        return _ranks_of_positives(qb @ keys.T, pb, key_valid)

    return jax.lax.map(one, (q, p)).reshape(nq)


def positive_ranks(queries: np.ndarray, keys: np.ndarray, positives: np.ndarray, key_valid: np.ndarray,
                   block: int = QUERY_BLOCK) -> np.ndarray:
    """Best rank among each query's positive keys (ties: lower key index first), as numpy int32 [num queries]."""
    nq = len(queries)
    pad = (-nq) % block
    qp = np.concatenate([queries, np.zeros((pad, queries.shape[1]), queries.dtype)])
    pp = np.concatenate([positives, np.full((pad, positives.shape[1]), -1, positives.dtype)])
    with jax.default_matmul_precision("highest"):
        ranks = _block_ranks(jnp.asarray(qp, jnp.float32), jnp.asarray(keys, jnp.float32), jnp.asarray(pp, jnp.int32),
                             jnp.asarray(key_valid, bool), block=block)
    return np.asarray(ranks)[:nq]


def recall_metrics(image_features: np.ndarray, text_features: np.ndarray, text_image: np.ndarray,
                   image_valid: np.ndarray | None = None, ks=RECALL_K) -> dict:
    """CLIP_benchmark's recalls from features. ``text_image[t]`` is the image of caption t."""
    image_features = np.asarray(image_features, np.float32)
    text_features = np.asarray(text_features, np.float32)
    text_image = np.asarray(text_image, np.int64)
    ni = len(image_features)
    image_valid = np.ones(ni, bool) if image_valid is None else np.asarray(image_valid, bool)
    text_valid = image_valid[text_image]
    if not image_valid.any():
        raise UserError("retrieval: no image could be decoded")
    nonfinite.check_array(image_features[image_valid], "image features", "images")
    nonfinite.check_array(text_features[text_valid], "text features", "captions")
    # text -> image: one positive per caption.
    t_rank = positive_ranks(text_features[text_valid], image_features, text_image[text_valid][:, None], image_valid)
    # image -> text: the captions of each image are its positives.
    counts = np.bincount(text_image, minlength=ni)
    width = max(int(counts.max()), 1)
    pos = np.full((ni, width), -1, np.int64)
    order = np.argsort(text_image, kind="stable")
    slot = np.arange(len(text_image)) - np.repeat(np.cumsum(counts) - counts, counts)
    pos[text_image[order], slot] = order
    i_rank = positive_ranks(image_features[image_valid], text_features, pos[image_valid], text_valid)
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = float(np.mean(t_rank < k))
        out[f"text_retrieval_recall@{k}"] = float(np.mean(i_rank < k))
    return out


def evaluate(em, dataset, batch_size: int) -> dict:
    """Encodes the images and captions of a retrieval set and returns ``{"metrics", "skipped_images", ...}``."""
    from vlscale.eval.zeroshot import encode_texts

    step = em.fn("encode_image")
    with em.context():
        out = batches.run_batched(lambda b: {"features": step(em.params, b["image"])},
                                  dataset.loader(em.config.image_size), dataset.num_images, batch_size, em.mesh,
                                  progress=f"retrieval {dataset.name} images")
    texts = [c for caps in dataset.captions for c in caps]
    text_image = np.repeat(np.arange(dataset.num_images), [len(c) for c in dataset.captions])
    text_features = encode_texts(em, texts, batch_size, progress=f"retrieval {dataset.name} texts")
    metrics = recall_metrics(out["features"], text_features, text_image, out["valid"])
    skipped = int(np.sum(~out["valid"]))
    return {"metrics": metrics, "skipped_images": skipped, "num_images": dataset.num_images - skipped,
            "num_texts": int(np.sum(out["valid"][text_image]))}
