"""Scores are finite or absent: the ranking order with NaN, +-inf and exact ties (against CLIP_benchmark's torch
definitions), and evaluations that stop, with no row written, when a feature, logit or similarity is non-finite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.eval.conftest import BATCH, perturbed_params
from vlscale.cli import main
from vlscale.eval import retrieval, zeroshot
from vlscale.eval.nonfinite import NonFiniteScores
from vlscale.models import saved_params

NAN, INF = float("nan"), float("inf")
# Rows with NaN, +-inf and exact ties in every combination that matters.
LOGITS = np.array([
    [1.0, NAN, 3.0, NAN, INF, -INF, 3.0, INF],
    [NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN],
    [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0],
    [-INF, -INF, 0.0, -INF, 0.5, 0.5, -1.0, 7.0],
    [INF, 1.0, INF, NAN, -INF, 0.0, 0.0, 2.0],
    [0.3, -0.2, 0.9, 0.1, -0.7, 0.4, 0.8, -0.1],  # no ties, all finite
], np.float32)


def torch_ranks(scores: np.ndarray) -> np.ndarray:
    """rank[i, c]: position of column c in row i of CLIP_benchmark's order made deterministic (stable torch.sort)."""
    order = torch.sort(torch.from_numpy(scores), dim=1, descending=True, stable=True).indices.numpy()
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :].repeat(len(scores), 0), axis=1)
    return ranks


def test_label_rank_and_top1_follow_torchs_order_with_nan_inf_and_ties():
    want = torch_ranks(LOGITS)
    for c in range(LOGITS.shape[1]):
        got = np.asarray(zeroshot.label_rank(jnp.asarray(LOGITS), jnp.full(len(LOGITS), c)))
        assert got.tolist() == want[:, c].tolist(), c
    # By hand for the first row: NaNs first (1 then 3), then +inf (4 then 7), the tied 3.0s (2 then 6), 1.0, -inf.
    assert want[0].tolist() == [6, 0, 4, 1, 2, 7, 5, 3]
    top = np.asarray(zeroshot.top1(jnp.asarray(LOGITS)))
    assert top.tolist() == [1, 0, 0, 7, 3, 2] == np.argmin(want, axis=1).tolist()


def test_accuracy_matches_clip_benchmarks_topk_where_its_order_is_defined():
    # CLIP_benchmark's accuracy(): the target among torch.topk's k indices. topk puts NaN first like sort does, but
    # leaves equal scores in no documented order, so compare on the rows where the top k has no tie across its edge.
    x = torch.from_numpy(LOGITS)
    for k in (1, 2, 3, 5):
        top = torch.topk(x, k, dim=1, largest=True, sorted=True).indices.numpy()
        for c in range(LOGITS.shape[1]):
            rank = np.asarray(zeroshot.label_rank(jnp.asarray(LOGITS), jnp.full(len(LOGITS), c)))
            for i in (0, 3, 5):  # rows 0 and 3: ties only inside or outside the top k for these k
                if i == 0 and k in (1, 3, 5):
                    continue  # k cuts through a tie (NaN/NaN, +inf/+inf, 3.0/3.0): torch's pick is arbitrary
                if i == 3 and k == 2:
                    continue  # 0.5/0.5 straddle the edge
                assert (rank[i] < k) == (c in top[i]), (k, c, i)


def test_ranks_of_positives_follow_torchs_order_and_never_rank_dropped_keys():
    scores = LOGITS
    want = torch_ranks(scores)
    positives = np.array([[1, 6], [5, -1], [7, 2], [0, 3], [4, -1], [4, 6]])
    key_valid = np.ones(scores.shape[1], bool)
    got = np.asarray(retrieval._ranks_of_positives(jnp.asarray(scores), jnp.asarray(positives), jnp.asarray(key_valid)))
    best = [min(want[i, p] for p in row if p >= 0) for i, row in enumerate(positives)]
    assert got.tolist() == best == [0, 5, 2, 5, 7, 1]
    # A dropped (undecodable) key is not ranked at all, even when its score ties or beats the positive's. (Positives
    # are always kept keys: an undecodable image's captions are dropped with it; rows 0 and 3 would break that.)
    key_valid[[0, 1, 3]] = False
    got = np.asarray(retrieval._ranks_of_positives(jnp.asarray(scores), jnp.asarray(positives), jnp.asarray(key_valid)))
    kept = np.flatnonzero(key_valid)
    want_kept = torch_ranks(scores[:, kept])
    col = {c: j for j, c in enumerate(kept)}
    best = {i: min(want_kept[i, col[p]] for p in positives[i] if p >= 0) for i in (1, 2, 4, 5)}
    assert [got[i] for i in (1, 2, 4, 5)] == [best[i] for i in (1, 2, 4, 5)] == [2, 0, 4, 1]


def test_retrieval_recall_at_k_matches_clip_benchmark_on_ties():
    # Equal features: every score ties; recall_at_k with the stable order counts the lowest-index images.
    img = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    txt = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    got = retrieval.recall_metrics(img, txt, np.array([0, 1, 2]), ks=(1, 2))
    assert got["image_retrieval_recall@1"] == pytest.approx(2 / 3)  # caption 1's image ties with image 0, after it
    assert got["image_retrieval_recall@2"] == 1.0


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_retrieval_refuses_non_finite_features(bad):
    rng = np.random.default_rng(0)
    img, txt = rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((8, 8)).astype(np.float32)
    text_image = np.repeat(np.arange(4), 2)
    bad_img = img.copy()
    bad_img[2, 3] = bad
    with pytest.raises(NonFiniteScores, match="1 of 4 images give NaN or infinite image features"):
        retrieval.recall_metrics(bad_img, txt, text_image)
    # ... unless that image is one that could not be decoded (its row is never used).
    valid = np.array([True, True, False, True])
    assert retrieval.recall_metrics(bad_img, txt, text_image, valid) == retrieval.recall_metrics(img, txt, text_image,
                                                                                                 valid)
    bad_txt = txt.copy()
    bad_txt[5, 0] = bad
    with pytest.raises(NonFiniteScores, match="1 of 8 captions give NaN or infinite text features"):
        retrieval.recall_metrics(img, bad_txt, text_image)


@pytest.fixture(scope="module")
def nan_clip_ckpt(tmp_path_factory):
    """A converted tiny-clip checkpoint whose visual projection is NaN (the issue's probe)."""
    params = perturbed_params("tiny-clip")
    params["visual"]["proj"] = np.full_like(np.asarray(params["visual"]["proj"]), np.nan)
    d = tmp_path_factory.mktemp("nanclip") / "ckpt"
    saved_params.save_params(d, params, "tiny-clip")
    return d


@pytest.mark.parametrize("task,dataset", [("zeroshot", "synth:colour"), ("retrieval", "synth:retrieval")])
def test_nan_weights_exit_2_in_one_line_and_write_no_row(tmp_path, nan_clip_ckpt, capsys, task, dataset):
    table = tmp_path / "results.csv"
    rc = main(["eval", "--checkpoint", str(nan_clip_ckpt), "--task", task, "--dataset", dataset,
               "--num-examples", "16", "--batch-size", str(BATCH), "--out", str(tmp_path / "out"),
               "--results", str(table), "--pretrain-dataset", "laion", "--lr-scheduler", "cosine",
               "--samples-seen", "1e6"])
    out, err = capsys.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"checkpoint {nan_clip_ckpt}: {task} on synth_{dataset.split(':')[1]} stopped, no row written" in err
    assert "16 of 16 images give NaN or infinite" in err and "acc1=" not in out and "recall" not in out
    assert not table.exists() and not (tmp_path / "out").exists()


def test_nan_generative_scores_stop_the_evaluation():
    from vlscale.eval import datasets, generative
    from vlscale.eval.encoders import EvalModel

    params = jax.tree.map(np.asarray, perturbed_params("tiny-mammut", seed=1))
    ds = datasets.open_dataset("synth:colour", "generative", num_examples=8)
    good = generative.evaluate(EvalModel.create("tiny-mammut", params), ds, ds.prompts, batch_size=8)
    assert 0 <= good["metrics"]["generative_acc1"] <= 1
    leaves, tree = jax.tree.flatten(params)
    leaves = [np.full_like(a, np.inf) if a.ndim == 2 and i == len(leaves) - 1 else a for i, a in enumerate(leaves)]
    em = EvalModel.create("tiny-mammut", jax.tree.unflatten(tree, leaves))
    with pytest.raises(NonFiniteScores, match="8 of 8 images give NaN or infinite caption log-likelihoods"):
        generative.evaluate(em, ds, ds.prompts, batch_size=8)
