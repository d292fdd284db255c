"""Pareto frontiers of error vs compute: which evaluated points a scaling law is fitted to.

Every method takes 1-D arrays ``x`` (compute, > 0) and ``y`` (error) and returns a boolean mask over the input
points. Results are deterministic: points are first ordered by (compute, error, input position), so ties always
resolve to the cheaper, then better, then earlier point.

* ``bins`` (the paper's ``pareto_frontier_bins``): geometric bins over compute, the minimum-error point of each
  bin, then only points that improve on every cheaper kept point; the largest-compute point (which the half-open
  bins leave out) is kept if it improves too. Unlike the paper's code, membership is by point, not by matching x and
  y values separately, so an unrelated point sharing a value is never marked.
* ``naive``: the non-dominated set (no other point is at most as expensive and at most as bad, one strictly).
* ``hull``: the vertices of the lower convex hull in log-log space, from the cheapest point to the lowest error.
"""

from __future__ import annotations

import numpy as np

from vlscale.errors import UserError

FRONTIER_METHODS = ("bins", "naive", "hull")
# The paper's bin count: int(log2(max_compute / 1500)) bin edges (scaling_laws/utils.py, pareto_frontier_bins).
BINS_FLOP_UNIT = 1500.0
MIN_BIN_EDGES = 2


def _check(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise UserError(f"frontier needs as many compute values as errors, got {x.size} and {y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise UserError("frontier input holds NaN or infinite values; validate the results table first")
    if x.size and (x <= 0).any():
        raise UserError("frontier needs positive compute values; drop rows with compute <= 0")
    return x, y


def _order(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Stable ordering by compute, then error, then input position."""
    return np.lexsort((np.arange(x.size), y, x))


def default_bin_edges(x_max: float) -> int:
    """Number of geometric bin edges the paper uses for a largest compute of ``x_max``."""
    return max(MIN_BIN_EDGES, int(np.log(x_max / BINS_FLOP_UNIT) / np.log(2.0)))


def _running_improvements(order: np.ndarray, y: np.ndarray) -> list[int]:
    """From candidates in compute order: the first, then each that is strictly better than all before it."""
    kept: list[int] = []
    best = np.inf
    for i in order:
        if not kept or y[i] < best:
            kept.append(int(i))
            best = y[i]
    return kept


def frontier_bins(x, y, n_edges: int | None = None) -> np.ndarray:
    """The paper's binned frontier (see module doc). ``n_edges`` geometric bin edges; default ``default_bin_edges``."""
    x, y = _check(x, y)
    mask = np.zeros(x.size, dtype=bool)
    if x.size == 0:
        return mask
    order = _order(x, y)
    x_min, x_max = x.min(), x.max()
    if x_min == x_max:
        mask[order[np.argmin(y[order])]] = True
        return mask
    edges = np.geomspace(x_min, x_max, n_edges or default_bin_edges(x_max))
    # Bin j holds edges[j] <= x < edges[j+1]; the largest compute falls in none (half-open bins, as in the paper).
    bin_of = np.searchsorted(edges, x[order], side="right") - 1
    winners = []
    for b in np.unique(bin_of[(bin_of >= 0) & (bin_of < len(edges) - 1)]):
        members = order[bin_of == b]
        winners.append(members[np.argmin(y[members])])  # argmin takes the first: cheapest among equal errors
    winners = np.asarray(winners, dtype=np.int64)
    kept = _running_improvements(winners[_order(x[winners], y[winners])], y)
    at_max = order[x[order] == x_max]
    top = at_max[np.argmin(y[at_max])]
    if not kept or y[top] < y[kept].min():
        kept.append(int(top))
    mask[kept] = True
    return mask


def frontier_naive(x, y) -> np.ndarray:
    """Non-dominated points; of exact duplicates only the first is kept."""
    x, y = _check(x, y)
    mask = np.zeros(x.size, dtype=bool)
    # In (compute, error) order a point is non-dominated iff its error is below every earlier point's error.
    mask[_running_improvements(_order(x, y), y)] = True
    return mask


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def frontier_hull(x, y) -> np.ndarray:
    """Lower convex hull vertices in (log compute, log error), from the cheapest point to the lowest error.

    Collinear middle points are not vertices and are left out. Needs positive errors (log scale).
    """
    x, y = _check(x, y)
    mask = np.zeros(x.size, dtype=bool)
    if x.size == 0:
        return mask
    if (y <= 0).any():
        raise UserError("the hull frontier works in log-log space and needs errors > 0; use --frontier bins or naive")
    # Only non-dominated points can be on the decreasing part of the lower hull.
    cand = np.flatnonzero(frontier_naive(x, y))
    cand = cand[_order(x[cand], y[cand])]
    pts = np.stack([np.log(x[cand]), np.log(y[cand])], axis=1)
    hull: list[int] = []
    for k in range(len(cand)):
        while len(hull) >= 2 and _cross(pts[hull[-2]], pts[hull[-1]], pts[k]) <= 0:
            hull.pop()
        hull.append(k)
    mask[cand[hull]] = True
    return mask


def best_per_compute(x, y) -> np.ndarray:
    """The minimum-error point at each distinct compute value (first of equal errors)."""
    x, y = _check(x, y)
    mask = np.zeros(x.size, dtype=bool)
    order = _order(x, y)
    xs = x[order]
    first = np.ones(xs.size, dtype=bool)
    first[1:] = xs[1:] != xs[:-1]
    mask[order[first]] = True
    return mask


def pareto_frontier(x, y, method: str = "bins") -> np.ndarray:
    """Dispatches to ``frontier_<method>``; ``method`` is one of ``FRONTIER_METHODS``."""
    if method == "bins":
        return frontier_bins(x, y)
    if method == "naive":
        return frontier_naive(x, y)
    if method == "hull":
        return frontier_hull(x, y)
    raise UserError(f"unknown frontier method {method!r}; choose one of {', '.join(FRONTIER_METHODS)}")
