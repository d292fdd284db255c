"""Pareto frontiers on hand-made point sets, and the paper's bins frontier on the published table."""

import numpy as np
import pytest

from vlscale.errors import UserError
from vlscale.scaling import frontier as fr
from vlscale.scaling import results


def _kept(mask, x, y):
    return sorted(zip(np.asarray(x)[mask].tolist(), np.asarray(y)[mask].tolist()))


def test_naive_keeps_exactly_the_non_dominated_points():
    x = [1, 2, 2, 3, 4, 5, 6]
    y = [0.9, 0.8, 0.85, 0.8, 0.5, 0.6, 0.4]
    # (2, .85) dominated by (2, .8); (3, .8) by (2, .8) (cheaper, equal error); (5, .6) by (4, .5)
    assert _kept(fr.frontier_naive(x, y), x, y) == [(1, 0.9), (2, 0.8), (4, 0.5), (6, 0.4)]


def test_naive_keeps_the_first_of_exact_duplicates():
    x = [1.0, 2.0, 2.0, 3.0]
    y = [0.5, 0.4, 0.4, 0.3]
    assert fr.frontier_naive(x, y).tolist() == [True, True, False, True]


def test_bins_takes_the_best_per_bin_then_only_improvements():
    # 4 edges over [1, 1000] -> bins [1,10), [10,100), [100,1000); 1000 itself falls in none.
    x = np.array([1.0, 2.0, 15.0, 50.0, 200.0, 500.0, 1000.0])
    y = np.array([0.9, 0.8, 0.85, 0.7, 0.75, 0.72, 0.6])
    mask = fr.frontier_bins(x, y, n_edges=4)
    # bin winners: (2, .8), (50, .7), (500, .72); .72 does not improve on .7; the top point .6 does.
    assert _kept(mask, x, y) == [(2.0, 0.8), (50.0, 0.7), (1000.0, 0.6)]


def test_bins_drops_the_largest_compute_point_when_it_does_not_improve():
    x = np.array([1.0, 20.0, 300.0, 1000.0])
    y = np.array([0.9, 0.5, 0.3, 0.35])
    mask = fr.frontier_bins(x, y, n_edges=4)
    assert _kept(mask, x, y) == [(1.0, 0.9), (20.0, 0.5), (300.0, 0.3)]


def test_bins_is_independent_of_input_order():
    rng = np.random.default_rng(0)
    x = np.exp(rng.uniform(np.log(1e6), np.log(1e12), 200))
    y = 0.1 + 50 * (x + 1e8) ** -0.25 + rng.uniform(0, 0.2, 200)
    ref = _kept(fr.frontier_bins(x, y), x, y)
    for _ in range(3):
        p = rng.permutation(200)
        assert _kept(fr.frontier_bins(x[p], y[p]), x[p], y[p]) == ref
    # every bins point is non-dominated
    naive = set(_kept(fr.frontier_naive(x, y), x, y))
    assert set(ref) <= naive


def test_default_bin_count_is_the_papers():
    # int(log2(x_max / 1500)) edges (scaling_laws/utils.py); at least 2.
    assert fr.default_bin_edges(1.5e12) == 29
    assert fr.default_bin_edges(2000.0) == 2


def test_hull_keeps_convex_vertices_in_log_log_space():
    x = np.array([1e6, 1e7, 1e8, 1e9, 1e10])
    # log y: 0, -1, -1.5, -2.2, -2.5 -> (1e8, e^-1.5) lies above the chord from 1e7 to 1e9
    y = np.exp([0.0, -1.0, -1.5, -2.2, -2.5])
    mask = fr.frontier_hull(x, y)
    assert mask.tolist() == [True, True, False, True, True]


def test_hull_drops_collinear_middle_points_and_dominated_points():
    x = np.array([1.0, 10.0, 100.0, 50.0])
    y = np.array([1.0, 0.1, 0.01, 0.5])  # a straight line in log-log; (50, .5) is dominated
    assert fr.frontier_hull(x, y).tolist() == [True, False, True, False]


def test_hull_needs_positive_errors():
    with pytest.raises(UserError, match="errors > 0"):
        fr.frontier_hull([1.0, 2.0], [0.5, 0.0])


def test_best_per_compute_picks_the_minimum_at_each_distinct_compute():
    x = [5.0, 1.0, 5.0, 1.0, 7.0]
    y = [0.3, 0.9, 0.2, 0.8, 0.4]
    assert fr.best_per_compute(x, y).tolist() == [False, False, True, True, True]


def test_dispatch_and_bad_input():
    x, y = [1.0, 2.0], [0.5, 0.4]
    for m in fr.FRONTIER_METHODS:
        assert fr.pareto_frontier(x, y, m).tolist() == [True, True]
    with pytest.raises(UserError, match="choose one of bins, naive, hull"):
        fr.pareto_frontier(x, y, "alpha")
    with pytest.raises(UserError, match="positive compute"):
        fr.frontier_naive([0.0, 1.0], [0.5, 0.4])
    with pytest.raises(UserError, match="as many"):
        fr.frontier_bins([1.0, 2.0], [0.5])


def _paper_bins(x_val, y_val):
    """The paper's pareto_frontier_bins, restated: returns the kept (x, y) pairs."""
    num = int(np.log(x_val.max() / 1500) / np.log(2))
    edges = np.geomspace(x_val.min(), x_val.max(), num)
    winners = []
    for i in range(len(edges) - 1):
        m = (x_val >= edges[i]) & (x_val < edges[i + 1])
        if m.any():
            j = np.argmin(y_val[m])
            winners.append((x_val[m][j], y_val[m][j]))
    kept, best = [winners[0]], winners[0][1]
    for p in winners:
        if p[1] < best:
            kept.append(p)
            best = p[1]
    top = np.argmax(x_val)
    if y_val[top] < best:
        kept.append((x_val[top], y_val[top]))
    return sorted((float(a), float(b)) for a, b in kept)


@pytest.mark.parametrize("model_type", ["clip", "mammut"])
def test_bins_matches_the_paper_on_the_published_imagenet_table(shared_data, model_type):
    df = results.load_results(shared_data / "laion_scaling_results.csv")
    sel = results.select(df, results.Selection("imagenet1k", "acc1", "datacomp_1b", "cosine", (model_type,),
                                               min_compute=1e6, max_samples_seen=1e10))
    x, y = sel["x"].to_numpy(), sel["error"].to_numpy()
    mask = fr.frontier_bins(x, y)
    assert mask.sum() == 25
    assert _kept(mask, x, y) == _paper_bins(x, y)
