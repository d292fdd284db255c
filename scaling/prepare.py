"""From a results table and options to point sets ready to fit: selection, groups, frontiers, fitted points.

No JAX here. ``frontier_scope`` decides which runs build the fitted frontier: "fit" (the default) only runs with
compute <= fit_max_compute, so held-out runs cannot move it (the paper's bin edges depend on the largest compute);
"all" builds it from every run, as the paper does. The held-out frontier is always built from every run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from vlscale.scaling import frontier as frontier_lib
from vlscale.scaling import results as results_lib
from vlscale.scaling.options import Options
from vlscale.scaling.results import ResultsError, Selection

# Curves and comparisons are evaluated on this many log-spaced compute values, up to GRID_HEADROOM x the largest.
GRID_POINTS = 160
GRID_HEADROOM = 2.0


def as_table(data) -> pd.DataFrame:
    if isinstance(data, (str, Path)):
        return results_lib.load_results(data)
    return results_lib.validate_results(data)


def selection(opts: Options, *, benchmark=None, metric=None, pretrain_dataset=None, model_types=None) -> Selection:
    return Selection(benchmark, metric, pretrain_dataset, opts.lr_scheduler, model_types, opts.models,
                     opts.min_compute, opts.max_compute, opts.max_samples_seen, opts.x)


@dataclasses.dataclass
class Prepared:
    """A selection cut into groups, with frontiers, ready to fit (before any JAX work)."""

    selection: Selection
    group_by: str
    names: list[str]
    points: dict[str, pd.DataFrame]
    frontier: dict[str, np.ndarray]  # frontier of every selected run (held-out points come from it)
    fitted: dict[str, np.ndarray]  # the points the law is fitted to
    fit_max: dict[str, float | None]
    grid: np.ndarray
    frontier_scope: str

    def fitted_xy(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        g, m = self.points[name], self.fitted[name]
        return g["x"].to_numpy()[m], g["error"].to_numpy()[m]


def check_fit_max_keys(fit_max_compute, names: Sequence[str]) -> None:
    """A per-group limit naming a group the selection does not have is a typo, not "no limit"."""
    if isinstance(fit_max_compute, Mapping):
        unknown = [k for k in fit_max_compute if k not in names]
        if unknown:
            raise ResultsError(f"--fit-max-compute names {', '.join(unknown)}, which is not a group here; "
                               f"groups: {', '.join(names)} (names are case-sensitive)")


def _fit_max_for(fit_max_compute, name: str) -> float | None:
    if fit_max_compute is None:
        return None
    if isinstance(fit_max_compute, Mapping):
        v = fit_max_compute.get(name)
        return None if v is None else float(v)
    return float(fit_max_compute)


def _select(df: pd.DataFrame, sel: Selection, group_by: str, groups) -> pd.DataFrame:
    if group_by == "pretrain_dataset" and sel.pretrain_dataset is None:
        # grouping by dataset: the one-dataset rule of `select` does not apply; select each dataset separately
        present = sorted(df["pretrain_dataset"].unique()) if groups is None else list(groups)
        return pd.concat([results_lib.select(df, dataclasses.replace(sel, pretrain_dataset=p)) for p in present])
    return results_lib.select(df, sel)


def prepare(df: pd.DataFrame, sel: Selection, opts: Options, *, groups: Sequence[str] | None, n_params: int,
            form_label: str) -> Prepared:
    """Selects the rows, splits them into groups and marks each group's frontier and fitted points."""
    pts = _select(df, sel, opts.group_by, groups)
    sel = dataclasses.replace(sel, x=results_lib.resolve_x(df, sel.x))
    if sel.metric is None:
        sel = dataclasses.replace(sel, metric=str(pts["metric"].iloc[0]))
    if sel.downstream_dataset is None:
        sel = dataclasses.replace(sel, downstream_dataset=str(pts["downstream_dataset"].iloc[0]))
    present = list(dict.fromkeys(pts[opts.group_by]))
    if groups is None:
        names = sorted(present)
    else:
        missing = [g for g in groups if g not in present]
        if missing:
            raise ResultsError(
                f"group(s) {', '.join(missing)} have no rows in {sel.label()}; present: {', '.join(sorted(present))}"
            )
        names = list(groups)
    check_fit_max_keys(opts.fit_max_compute, names)
    out_points, out_frontier, out_fitted, out_max = {}, {}, {}, {}
    for name in names:
        g = pts[pts[opts.group_by] == name].sort_values(["x", "error"], kind="stable").reset_index(drop=True)
        x, y = g["x"].to_numpy(), g["error"].to_numpy()
        if (y <= 0).any():
            i = int(np.flatnonzero(y <= 0)[0])
            raise ResultsError(
                f"{name} {g['model'].iloc[i]} at {x[i]:.3g} GFLOPs has error {y[i]:g} (value {g['value'].iloc[i]:g}); "
                "scaling laws need errors > 0: drop that row"
            )
        mask = frontier_lib.pareto_frontier(x, y, opts.frontier)
        xmax = _fit_max_for(opts.fit_max_compute, name)
        if xmax is None:
            fitted = mask.copy()
        elif opts.frontier_scope == "all":
            fitted = mask & (x <= xmax)
        else:
            below = x <= xmax
            fitted = np.zeros(len(x), dtype=bool)
            if below.any():
                fitted[np.flatnonzero(below)] = frontier_lib.pareto_frontier(x[below], y[below], opts.frontier)
        if fitted.sum() < n_params:
            hint = " or raise --fit-max-compute" if xmax is not None else ""
            raise ResultsError(
                f"{name} has {int(fitted.sum())} frontier points to fit in {sel.label()} but form {form_label} has "
                f"{n_params} parameters; widen the selection (--min-compute/--max-compute/--models){hint}, "
                "use another --frontier, or choose a form with fewer parameters"
            )
        out_points[name], out_frontier[name], out_fitted[name], out_max[name] = g, mask, fitted, xmax
    return Prepared(sel, opts.group_by, names, out_points, out_frontier, out_fitted, out_max,
                    eval_grid(pts["x"].to_numpy(), opts.predict), opts.frontier_scope)


def eval_grid(x: np.ndarray, predict: Sequence[float]) -> np.ndarray:
    lo = float(np.min(x))
    hi = max([float(np.max(x))] + [float(p) for p in predict]) * GRID_HEADROOM
    return np.unique(np.concatenate([np.geomspace(lo, hi, GRID_POINTS), np.asarray(predict, dtype=np.float64)]))


def parse_benchmark(spec: str | tuple) -> tuple[str | None, str | None]:
    """``"mscoco_captions/text_retrieval_recall@5"`` -> (dataset, metric); ``"imagenet1k"`` -> (dataset, None)."""
    if isinstance(spec, tuple):
        return spec
    ds, _, metric = spec.partition("/")
    return ds or None, metric or None
