"""Metric definitions on hand-made inputs with known answers (ties included) and against the numpy reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from tests.eval import reference
from vlscale.eval import retrieval, zeroshot


def test_retrieval_recalls_with_known_ranks_and_ties():
    # Images 0 and 2 are identical, so every score against them ties; the lower index wins the tie.
    images = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    texts = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8], [0, 1]], np.float32)
    text_image = np.array([0, 2, 1, 1, 0])
    # text -> image ranks: t0 0 (ties with image 2, which comes later), t1 1 (image 0 ties and comes first),
    # t2 0, t3 0, t4 1 (image 1 scores higher; image 2 ties but comes later).
    # image -> text best ranks: image 0 via t0: 0; image 1 via t2: 0 (t4 ties, later); image 2 via t1: 1 (t0 first).
    got = retrieval.recall_metrics(images, texts, text_image, ks=(1, 2, 3))
    assert got["image_retrieval_recall@1"] == pytest.approx(3 / 5)
    assert got["image_retrieval_recall@2"] == 1.0
    assert got["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert got["text_retrieval_recall@2"] == 1.0
    assert got == pytest.approx(reference.retrieval(images, texts, text_image, ks=(1, 2, 3)))


def test_retrieval_matches_the_reference_on_random_features_and_drops_undecodable_images():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((37, 8)).astype(np.float32)
    txt = rng.standard_normal((37 * 5 - 3, 8)).astype(np.float32)
    text_image = np.concatenate([np.repeat(np.arange(37), 5)[:-3]])
    got = retrieval.recall_metrics(img, txt, text_image)
    assert got == pytest.approx(reference.retrieval(img, txt, text_image), abs=0)
    # An undecodable image is dropped together with its captions: same as evaluating without them.
    valid = np.ones(37, bool)
    valid[[3, 20]] = False
    keep_t = valid[text_image]
    remap = np.cumsum(valid) - 1
    got = retrieval.recall_metrics(img, txt, text_image, valid)
    want = reference.retrieval(img[valid], txt[keep_t], remap[text_image[keep_t]])
    assert got == pytest.approx(want, abs=0)


def test_label_rank_breaks_ties_towards_the_lower_class():
    logits = jnp.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    assert zeroshot.label_rank(logits, jnp.array([2, 3])).tolist() == [1, 3]
    assert zeroshot.label_rank(logits, jnp.array([1, 0])).tolist() == [0, 0]


def test_classification_metrics_match_the_reference():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((200, 10)).astype(np.float32)
    logits[::7, 3] = logits[::7, 5]  # some exact ties
    target = rng.integers(0, 9, 200)  # class 9 never occurs: mean_per_class_recall averages over present classes
    rank = np.asarray(zeroshot.label_rank(jnp.asarray(logits), jnp.asarray(target)))
    got = zeroshot.classification_metrics(rank, logits.argmax(1), target)
    assert got == pytest.approx(reference.classification(logits, target), abs=1e-12)


def test_mean_per_class_recall_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, 0, 2])
    assert zeroshot.mean_per_class_recall(pred, labels) == pytest.approx((0.5 + 1 + 0.5) / 3)
