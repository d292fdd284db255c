"""The scaling-law workflow as a Python API (what the CLI runs, and what a Colab user calls).

``fit(df, ...)`` selects rows, builds the Pareto frontier per group (model type by default), fits the chosen law to
the frontier points up to ``fit_max_compute``, and returns a ``FitReport`` with predictions and intervals,
held-out validation (every frontier and best-per-compute point above ``fit_max_compute``: observed vs predicted),
leave-one-out over the fitted frontier, and the compute-optimal allocation D_opt(C), N_opt(C).

``compare(df, ...)`` fits two groups on the same selection and returns a ``Comparison``: the difference in predicted
error at requested compute values with a bootstrap interval, the crossover compute (if the curves cross) and a
one-line verdict. ``compare_benchmarks(df, ...)`` runs it over several benchmarks and pretrain datasets and says
whether the verdict is consistent (``ComparisonSet``). All three have ``.summary()``, ``.to_json()``, ``.plot()``
and ``.save(out_dir)``.

Speed: the fits of all groups (and of all benchmarks in ``compare_benchmarks``) run in one batched call; point
sets are padded with zero-weight points to a few fixed lengths so compiled programs are reused; bootstrap and
leave-one-out refits start from the full-data optimum.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from vlscale.scaling import frontier as frontier_lib
from vlscale.scaling import results as results_lib
from vlscale.scaling.results import ResultsError, Selection

DEFAULT_LEVEL = 0.95
DEFAULT_BOOTSTRAP = 1000
# The paper's extrapolation targets (Nezhurina et al. 2025, Tab. 2): openCLIP/openMaMMUT ViT-L/14 at 12.8B samples.
PAPER_PREDICT_AT = (2.14e12, 2.59e12)
# The paper fits up to 1e12 GFLOPs and predicts beyond (scripts/fig1.sh LARGE_FLOPS_MAPPING).
PAPER_FIT_MAX_COMPUTE = 1e12
# Benchmarks of the paper's main comparison (Fig. 1-3): ImageNet-1k zero-shot and MS-COCO retrieval in both directions.
PAPER_BENCHMARKS = (
    ("imagenet1k", "acc1"),
    ("mscoco_captions", "image_retrieval_recall@5"),
    ("mscoco_captions", "text_retrieval_recall@5"),
)
PAPER_PRETRAIN_DATASETS = ("datacomp_1b", "relaion2b-en")
# Curves and comparisons are evaluated on this many log-spaced compute values, up to GRID_HEADROOM x the largest.
GRID_POINTS = 160
GRID_HEADROOM = 2.0
# Point sets are padded to a multiple of this length (zero-weight points) so jit programs are reused.
PAD_MULTIPLE = 16
# Evaluation points (predictions, held-out points, plot grid) are padded to a multiple of this length.
EVAL_PAD = 64
GROUP_BY = ("model_type", "pretrain_dataset", "model")
# Refits (bootstrap, leave-one-out) start only from the full-data optimum, without variable-projection seeds:
# on the paper's ImageNet frontiers this gave the same 95% intervals (to 1e-9) as uncertainty.BOOTSTRAP_SEEDS=4
# seeds per resample, at a small fraction of the time and memory (the seed scan is [sets x 3072 cells]).
REFIT_SEEDS = 0
# Where the main fit starts. "seeds": one start plus the fitter's variable-projection seeds, which scan the
# nonlinear parameters exhaustively; on the paper's 12 CLIP/MaMMUT frontiers this reached the same optima as
# "paper" (relative objective difference < 2e-11) about 100x faster. "paper": the paper's 3200-start grid as well.
STARTS = ("seeds", "paper")


def _log(progress: Callable[[str], None] | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


class _CompileTimer:
    """Sums JAX compile durations (trace + lower + backend compile) reported while active."""

    def __init__(self):
        self.seconds = 0.0

    def _listener(self, name, duration, **_):
        if name.startswith("/jax/core/compile/"):
            self.seconds += float(duration)

    def __enter__(self):
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._listener)
        return False


# ------------------------------------------------------------------------------------------------ batched fitting
def _padded_length(n: int, multiple: int = PAD_MULTIPLE) -> int:
    return int(math.ceil(n / multiple) * multiple)


def _start_grid(form: str, starts: str):
    """Start vectors for the main fit (see ``STARTS``); None means the fitter's default (the form's full grid)."""
    from vlscale.scaling.forms import get_form

    if starts not in STARTS:
        raise ResultsError(f"unknown --starts {starts!r}; choose one of {', '.join(STARTS)}")
    f = get_form(form)
    if starts == "paper" or f.profile is None:
        return None
    return f.init_grid()[:1]


def _fit_sets(sets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], form: str, *, loss: str, starts=None,
              n_seeds: int | None = None):
    """Fits point sets (x, y, weights) of any lengths in one batched call; returns CurveFits in order."""
    from vlscale.scaling.fit import DEFAULT_SEEDS, fit_curves_batched

    length = _padded_length(max(len(s[0]) for s in sets))
    xs = np.empty((len(sets), length))
    ys = np.empty((len(sets), length))
    ws = np.zeros((len(sets), length))
    for i, (x, y, w) in enumerate(sets):
        n = len(x)
        xs[i, :n], ys[i, :n], ws[i, :n] = x, y, w
        xs[i, n:], ys[i, n:] = x[0], y[0]  # padding: a copy of a real point with weight 0
    kwargs = {} if starts is None else {"starts": starts}
    return fit_curves_batched(xs, ys, ws, form, loss=loss, n_seeds=DEFAULT_SEEDS if n_seeds is None else n_seeds,
                              **kwargs)


def _refit_all(items, form: str, *, n_boot: int, seed: int, loss: str, leave_one_out: bool):
    """Bootstrap and leave-one-out refits of many frontiers in ONE batched call.

    ``items``: list of (x, y, full-data CurveFit). Each refit starts from its own frontier's full-data optimum
    (and ``REFIT_SEEDS`` variable-projection seeds), as in ``uncertainty.bootstrap_fit``.
    Resamples come from ``uncertainty.resample_weights`` with a per-frontier seed, so results do not depend on how
    many frontiers are fitted together. Returns per item (thetas [n_boot, p] or None, LOO thetas [n, p] or None).
    """
    from vlscale.scaling import fit as fit_lib
    from vlscale.scaling import uncertainty
    from vlscale.scaling.forms import get_form

    f = get_form(form)
    length = _padded_length(max(len(x) for x, _, _ in items))
    xs, ys, ws, starts, spans = [], [], [], [], []
    for x, y, curve in items:
        n = len(x)
        blocks = []
        if n_boot > 0:
            blocks.append(uncertainty.resample_weights(n, n_boot, f.n_params, np.random.default_rng(seed)))
        do_loo = leave_one_out and n > f.n_params
        if do_loo:
            blocks.append(1.0 - np.eye(n))
        w = np.concatenate(blocks) if blocks else np.zeros((0, n))
        spans.append((len(w), n_boot if n_boot > 0 else 0, n if do_loo else 0))
        if not len(w):
            continue
        wp = np.zeros((len(w), length))
        wp[:, :n] = w
        xp = np.concatenate([x, np.full(length - n, x[0])])
        yp = np.concatenate([y, np.full(length - n, y[0])])
        xs.append(np.broadcast_to(xp, wp.shape))
        ys.append(np.broadcast_to(yp, wp.shape))
        ws.append(wp)
        starts.append(np.broadcast_to(np.asarray(curve.theta)[None, None], (len(w), 1, f.n_params)))
    if not ws:
        return [(None, None) for _ in items]
    best = fit_lib.fit_weighted_sets(f, np.concatenate(xs), np.concatenate(ys), np.concatenate(ws),
                                     np.concatenate(starts), loss=loss, n_seeds=REFIT_SEEDS)
    thetas = best["theta"]
    out, at = [], 0
    for total, nb, nl in spans:
        t = thetas[at:at + total]
        out.append((t[:nb] if nb else None, t[nb:nb + nl] if nl else None))
        at += total
    return out


def _predict_theta(form: str, thetas: np.ndarray, x: np.ndarray) -> np.ndarray:
    """[n_theta, len(x)] predictions for many parameter vectors."""
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        return np.asarray(_predict_many_jit(form, jnp.asarray(thetas), jnp.asarray(x, dtype=jnp.float64)))


def _predict_many_jit(form: str, thetas, x):
    import jax

    from vlscale.scaling.forms import get_form

    if form not in _PREDICT_CACHE:
        _PREDICT_CACHE[form] = jax.jit(jax.vmap(get_form(form).predict, in_axes=(0, None)))
    return _PREDICT_CACHE[form](thetas, x)


_PREDICT_CACHE: dict = {}


def _interval(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    tail = 100.0 * (1.0 - level) / 2.0
    return np.nanpercentile(samples, tail, axis=0), np.nanpercentile(samples, 100.0 - tail, axis=0)


# ------------------------------------------------------------------------------------------------ results objects
@dataclasses.dataclass
class GroupFit:
    """One group's (e.g. one model type's) frontier, fit, predictions and validation."""

    name: str
    points: pd.DataFrame  # the group's selected rows (with x, error)
    frontier: np.ndarray  # bool mask over points
    fitted: np.ndarray  # bool mask: frontier points used by the fit (x <= fit_max_compute)
    fit_max_compute: float | None
    curve: object  # vlscale.scaling.fit.CurveFit
    predictions: list[dict]
    heldout: list[dict]
    loo: list[dict]
    allocation: dict
    grid: np.ndarray  # compute values the curve/bootstrap were evaluated at
    grid_pred: np.ndarray
    grid_boot: np.ndarray | None  # [n_boot, len(grid)] or None
    grid_lo: np.ndarray  # interval band over grid (NaN where none)
    grid_hi: np.ndarray
    interval_method: str

    @property
    def n_frontier(self) -> int:
        return int(self.frontier.sum())

    def to_json(self) -> dict:
        c = self.curve
        fx = self.points["x"].to_numpy()[self.frontier]
        fy = self.points["error"].to_numpy()[self.frontier]
        order = np.argsort(fx, kind="stable")
        out = {
            "form": c.form,
            "params": {k: float(v) for k, v in c.params.items()},
            "objective": float(c.objective),
            "mse": float(c.mse),
            "n_points": int(len(self.points)),
            "n_frontier": self.n_frontier,
            "n_fitted": int(self.fitted.sum()),
            "fit_max_compute": self.fit_max_compute,
            "frontier": [[float(fx[i]), float(fy[i])] for i in order],
            "converged_starts": int(c.converged_starts),
            "n_starts": int(c.n_starts),
            "at_bound": list(c.at_bound),
            "interval": self.interval_method,
            "predictions": self.predictions,
            "heldout": self.heldout,
            "loo": self.loo,
            "allocation": self.allocation,
        }
        return out

    def loo_summary(self) -> dict | None:
        if not self.loo:
            return None
        e = np.array([r["abs_err_pp"] for r in self.loo])
        return {"mean_abs_err_pp": float(e.mean()), "max_abs_err_pp": float(e.max()), "n": int(e.size)}


@dataclasses.dataclass
class FitReport:
    """Fits of every group in one selection. ``groups`` maps group name -> GroupFit."""

    selection: Selection
    group_by: str
    groups: dict[str, GroupFit]
    form: str
    frontier_method: str
    level: float
    n_boot: int
    fit_seconds: float
    compile_seconds: float

    def to_json(self) -> dict:
        sel = self.selection.to_dict()
        limits = {k: g.fit_max_compute for k, g in self.groups.items()}
        same = len(set(limits.values())) == 1
        sel.update(group_by=self.group_by, frontier=self.frontier_method, form=self.form, level=self.level,
                   bootstrap=self.n_boot, fit_max_compute=next(iter(limits.values())) if same else limits)
        return {
            "groups": {k: g.to_json() for k, g in self.groups.items()},
            "selection": sel,
            "fit_seconds": float(self.fit_seconds),
            "compile_seconds": float(self.compile_seconds),
        }

    def summary(self) -> str:
        from vlscale.scaling import report

        return report.fit_summary(self)

    def plot(self, ax=None, path: str | Path | None = None):
        from vlscale.scaling import plots

        return plots.plot_fit(self, ax=ax, path=path)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        from vlscale.scaling import report

        return report.save_fit(self, out_dir)


@dataclasses.dataclass
class Comparison:
    """Two groups fitted on one selection: ``diff`` = error(second) - error(first) (negative: second is better)."""

    fit: FitReport
    first: str
    second: str
    comparison: list[dict]
    crossover: dict
    verdict: str
    winner: str | None
    agree: float | None  # fraction of bootstraps agreeing on the sign at the judged compute
    judged_at: float

    def to_json(self) -> dict:
        out = self.fit.to_json()
        out.update(comparison=self.comparison, crossover=self.crossover, verdict=self.verdict,
                   compared=[self.first, self.second], winner=self.winner, agree=self.agree, judged_at=self.judged_at)
        return out

    def summary(self) -> str:
        from vlscale.scaling import report

        return report.comparison_summary(self)

    def plot(self, ax=None, path: str | Path | None = None):
        from vlscale.scaling import plots

        return plots.plot_fit(self.fit, ax=ax, path=path, title_extra=self.verdict)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        from vlscale.scaling import report

        return report.save_comparison(self, out_dir)


@dataclasses.dataclass
class ComparisonSet:
    """The same comparison on several benchmarks / pretrain datasets, with a consistency verdict."""

    comparisons: list[Comparison]
    consistent: bool
    consistency: str
    fit_seconds: float
    compile_seconds: float

    def to_json(self) -> dict:
        """The first comparison at top level (the fit.json contract), every one under ``benchmarks``."""
        out = self.comparisons[0].to_json()
        out["benchmarks"] = [c.to_json() for c in self.comparisons]
        out["consistency"] = {"consistent": self.consistent, "summary": self.consistency,
                              "table": [consistency_row(c) for c in self.comparisons]}
        out["fit_seconds"] = float(self.fit_seconds)
        out["compile_seconds"] = float(self.compile_seconds)
        return out

    def summary(self) -> str:
        from vlscale.scaling import report

        return report.comparison_set_summary(self)

    def plot(self, path: str | Path | None = None):
        from vlscale.scaling import plots

        return plots.plot_comparison_set(self, path=path)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        from vlscale.scaling import report

        return report.save_comparison_set(self, out_dir)


def consistency_row(c: Comparison) -> dict:
    sel = c.fit.selection
    row = next((r for r in c.comparison if r["compute"] == c.judged_at), None)
    return {
        "benchmark": sel.downstream_dataset,
        "metric": sel.metric,
        "pretrain_dataset": sel.pretrain_dataset,
        "winner": c.winner,
        "compute": c.judged_at,
        "diff": None if row is None else row["diff"],
        "lo": None if row is None else row["lo"],
        "hi": None if row is None else row["hi"],
        "crossover": c.crossover.get("compute"),
        "agree": c.agree,
        "verdict": c.verdict,
    }


# ------------------------------------------------------------------------------------------------ fitting
def _as_table(data) -> pd.DataFrame:
    if isinstance(data, (str, Path)):
        return results_lib.load_results(data)
    return results_lib.validate_results(data)


def _fit_max_for(fit_max_compute, name: str) -> float | None:
    if fit_max_compute is None:
        return None
    if isinstance(fit_max_compute, Mapping):
        v = fit_max_compute.get(name)
        return None if v is None else float(v)
    return float(fit_max_compute)


@dataclasses.dataclass
class _Prepared:
    """A selection cut into groups, with frontiers, ready to fit (before any JAX work)."""

    selection: Selection
    group_by: str
    names: list[str]
    points: dict[str, pd.DataFrame]
    frontier: dict[str, np.ndarray]
    fitted: dict[str, np.ndarray]
    fit_max: dict[str, float | None]
    grid: np.ndarray


def _prepare(df, sel: Selection, *, group_by: str, groups: Sequence[str] | None, form: str, frontier: str,
             fit_max_compute, predict: Sequence[float]) -> _Prepared:
    from vlscale.scaling.forms import get_form

    if group_by not in GROUP_BY:
        raise ResultsError(f"cannot group by {group_by!r}; choose one of {', '.join(GROUP_BY)}")
    if frontier not in frontier_lib.FRONTIER_METHODS:
        raise ResultsError(f"unknown frontier method {frontier!r}; choose one of {', '.join(frontier_lib.FRONTIER_METHODS)}")
    n_params = get_form(form).n_params
    if group_by == "pretrain_dataset" and sel.pretrain_dataset is None:
        # grouping by dataset: the one-dataset rule of `select` does not apply; select each dataset separately
        tables = []
        present = sorted(df["pretrain_dataset"].unique()) if groups is None else list(groups)
        for p in present:
            tables.append(results_lib.select(df, dataclasses.replace(sel, pretrain_dataset=p)))
        pts = pd.concat(tables)
    else:
        pts = results_lib.select(df, sel)
    sel = dataclasses.replace(sel, x=results_lib.resolve_x(df, sel.x))
    if sel.metric is None:
        sel = dataclasses.replace(sel, metric=str(pts["metric"].iloc[0]))
    if sel.downstream_dataset is None:
        sel = dataclasses.replace(sel, downstream_dataset=str(pts["downstream_dataset"].iloc[0]))
    present = list(dict.fromkeys(pts[group_by]))
    if groups is None:
        names = sorted(present)
    else:
        missing = [g for g in groups if g not in present]
        if missing:
            raise ResultsError(
                f"group(s) {', '.join(missing)} have no rows in {sel.label()}; present: {', '.join(sorted(present))}"
            )
        names = list(groups)
    out_points, out_frontier, out_fitted, out_max = {}, {}, {}, {}
    for name in names:
        g = pts[pts[group_by] == name].sort_values(["x", "error"], kind="stable").reset_index(drop=True)
        x, y = g["x"].to_numpy(), g["error"].to_numpy()
        if (y <= 0).any():
            i = int(np.flatnonzero(y <= 0)[0])
            raise ResultsError(
                f"{name} {g['model'].iloc[i]} at {x[i]:.3g} GFLOPs has error {y[i]:g} (value {g['value'].iloc[i]:g}); "
                "scaling laws need errors > 0: drop that row"
            )
        mask = frontier_lib.pareto_frontier(x, y, frontier)
        xmax = _fit_max_for(fit_max_compute, name)
        fitted = mask & (x <= xmax) if xmax is not None else mask.copy()
        if fitted.sum() < n_params:
            hint = " or raise --fit-max-compute" if xmax is not None else ""
            raise ResultsError(
                f"{name} has {int(fitted.sum())} frontier points to fit in {sel.label()} but form {form} has "
                f"{n_params} parameters; widen the selection (--min-compute/--max-compute/--models){hint}, "
                "use another --frontier, or choose a form with fewer parameters"
            )
        out_points[name], out_frontier[name], out_fitted[name], out_max[name] = g, mask, fitted, xmax
    lo = float(pts["x"].min())
    hi = max([float(pts["x"].max())] + [float(p) for p in predict]) * GRID_HEADROOM
    grid = np.unique(np.concatenate([np.geomspace(lo, hi, GRID_POINTS), np.asarray(predict, dtype=np.float64)]))
    return _Prepared(sel, group_by, names, out_points, out_frontier, out_fitted, out_max, grid)


def _allocation(points: pd.DataFrame, mask: np.ndarray, predict: Sequence[float]) -> dict:
    """Log-linear fits of samples seen D and model cost N (GFLOPs per sample) on compute, over frontier points.

    Because C = N * D exactly, the two slopes sum to 1 (a check on the data); predictions at ``predict``.
    """
    c = points["x"].to_numpy()[mask]
    samples_col = "samples_seen_actual" if "samples_seen_actual" in points.columns else "samples_seen"
    out = {}
    if len(np.unique(points["gflops_per_sample"].to_numpy()[mask])) < 2:
        return out  # one model size (e.g. --group-by model): there is no trade-off to fit
    for key, col in (("D_opt", samples_col), ("N_opt", "gflops_per_sample")):
        v = points[col].to_numpy()[mask]
        if len(np.unique(c)) < 2:
            continue
        slope, intercept = np.polyfit(np.log(c), np.log(v), 1)
        out[key] = {
            "column": col,
            "slope": float(slope),
            "intercept": float(intercept),
            "formula": f"{col} = exp({intercept:.4g}) * C^{slope:.4g}",
            "predictions": [{"compute": float(p), "value": float(np.exp(intercept + slope * np.log(p)))} for p in predict],
        }
    return out


def _finish_group(prep: _Prepared, name: str, curve, form: str, *, predict, thetas_boot, thetas_loo, level,
                  bootstrap: int) -> GroupFit:
    g = prep.points[name]
    x, y = g["x"].to_numpy(), g["error"].to_numpy()
    fitted = prep.fitted[name]
    xmax = prep.fit_max[name]
    predict = np.asarray(predict, dtype=np.float64)
    # Held-out: frontier points and best-per-compute points above the fit range.
    held_mask = np.zeros(len(g), dtype=bool)
    kind = np.array([""] * len(g), dtype=object)
    if xmax is not None:
        above = x > xmax
        best = frontier_lib.best_per_compute(x, y)
        held_mask = above & (prep.frontier[name] | best)
        kind = np.where(prep.frontier[name], "frontier", "best")
    held_idx = np.flatnonzero(held_mask)
    eval_x = np.concatenate([predict, x[held_idx], prep.grid])
    # Pad to a fixed bucket so every group reuses one compiled predict program.
    n_eval = len(eval_x)
    padded = np.concatenate([eval_x, np.full(_padded_length(n_eval, EVAL_PAD) - n_eval, eval_x[-1])])
    point = np.asarray(curve.predict(padded))[:n_eval]
    if thetas_boot is not None:
        boot = _predict_theta(form, thetas_boot, padded)[:, :n_eval]
        lo, hi = _interval(boot, level)
        method = f"bootstrap ({bootstrap} resamples, percentile)"
        grid_boot = boot[:, len(predict) + len(held_idx):]
    else:
        from vlscale.scaling.uncertainty import delta_interval

        xf, yf = x[fitted], y[fitted]
        pad = _padded_length(len(xf)) - len(xf)  # zero-weight padding: one compiled program for every group
        xw = np.concatenate([xf, np.full(pad, xf[0])])
        yw = np.concatenate([yf, np.full(pad, yf[0])])
        ww = np.concatenate([np.ones(len(xf)), np.zeros(pad)])
        try:
            lo, hi = (np.asarray(a)[:n_eval] for a in delta_interval(curve, xw, yw, padded, level=level, weights=ww))
            method = "delta method"
        except Exception as e:  # e.g. as many points as parameters: no interval rather than a wrong one
            lo = hi = np.full(eval_x.shape, np.nan)
            method = f"none (delta method: {str(e).splitlines()[0] if str(e) else type(e).__name__})"
        grid_boot = None
    k = len(predict)
    predictions = [
        {"compute": float(predict[i]), "error": float(point[i]), "lo": float(lo[i]), "hi": float(hi[i])}
        for i in range(k)
    ]
    heldout = []
    for j, i in enumerate(held_idx):
        pred = float(point[k + j])
        obs = float(y[i])
        heldout.append({
            "compute": float(x[i]), "observed": obs, "predicted": pred, "abs_err_pp": 100.0 * abs(pred - obs),
            "rel_err": abs(pred - obs) / obs, "lo": float(lo[k + j]), "hi": float(hi[k + j]), "kind": str(kind[i]),
            "model": str(g["model"].iloc[i]), "samples_seen": float(g["samples_seen"].iloc[i]),
            "inside_interval": bool(lo[k + j] <= obs <= hi[k + j]),
        })
    loo = []
    if thetas_loo is not None:
        fi = np.flatnonzero(fitted)
        pad = _padded_length(len(fi)) - len(fi)  # fixed shapes: one compiled program for every group
        xl = np.concatenate([x[fi], np.full(pad, x[fi][-1])])
        tl = np.concatenate([thetas_loo, np.repeat(thetas_loo[-1:], pad, axis=0)])
        preds = _predict_theta(form, tl, xl)
        for j, i in enumerate(fi):
            pred = float(preds[j, j])
            loo.append({"compute": float(x[i]), "observed": float(y[i]), "predicted": pred,
                        "abs_err_pp": 100.0 * abs(pred - float(y[i])), "model": str(g["model"].iloc[i])})
    return GroupFit(
        name=name, points=g, frontier=prep.frontier[name], fitted=fitted, fit_max_compute=xmax, curve=curve,
        predictions=predictions, heldout=heldout, loo=loo, allocation=_allocation(g, fitted, predict),
        grid=prep.grid, grid_pred=point[k + len(held_idx):], grid_boot=grid_boot,
        grid_lo=np.asarray(lo)[k + len(held_idx):], grid_hi=np.asarray(hi)[k + len(held_idx):], interval_method=method,
    )


def _fit_prepared(preps: Sequence[_Prepared], *, form: str, predict, bootstrap: int, level: float, seed: int,
                  loss: str, leave_one_out: bool, progress, starts: str = "seeds"
                  ) -> tuple[list[dict[str, GroupFit]], float, float]:
    """Fits every group of every prepared selection: one batched main fit, then bootstrap and LOO per group."""
    from vlscale.scaling.forms import get_form

    n_params = get_form(form).n_params
    t0 = time.perf_counter()
    keys = [(p, name) for p in preps for name in p.names]
    with _CompileTimer() as timer:
        sets = []
        for p, name in keys:
            g = p.points[name]
            m = p.fitted[name]
            xf, yf = g["x"].to_numpy()[m], g["error"].to_numpy()[m]
            sets.append((xf, yf, np.ones_like(xf)))
        grid = _start_grid(form, starts)
        _log(progress, f"fitting {form} to {len(sets)} frontier(s) ({sum(len(s[0]) for s in sets)} points; "
                       f"starts: {starts}) ...")
        curves = _fit_sets(sets, form, loss=loss, starts=grid)
        if bootstrap > 0 or leave_one_out:
            _log(progress, f"refitting {bootstrap} bootstrap resamples" + (" and leave-one-out" if leave_one_out else "")
                           + f" of each frontier in one batch ...")
        refits = _refit_all([(xf, yf, c) for (xf, yf, _), c in zip(sets, curves)], form, n_boot=bootstrap,
                            seed=seed, loss=loss, leave_one_out=leave_one_out)
        out: list[dict[str, GroupFit]] = [dict() for _ in preps]
        for (p, name), curve, (thetas_boot, thetas_loo) in zip(keys, curves, refits):
            gf = _finish_group(p, name, curve, form, predict=predict, thetas_boot=thetas_boot, thetas_loo=thetas_loo,
                               level=level, bootstrap=bootstrap)
            out[preps.index(p)][name] = gf
            loo = gf.loo_summary()
            _log(progress, f"  {p.selection.label()} · {name}: {int(p.fitted[name].sum())}/{gf.n_frontier} frontier "
                           "points fitted" + (f", leave-one-out {loo['mean_abs_err_pp']:.2f} pp mean" if loo else ""))
    return out, time.perf_counter() - t0, timer.seconds


def fit(
    data,
    *,
    benchmark: str | None = None,
    metric: str | None = None,
    pretrain_dataset: str | None = None,
    lr_scheduler: str | None = None,
    model_types: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    group_by: str = "model_type",
    x: str | None = None,
    form: str = "saturation_both",
    frontier: str = "bins",
    min_compute: float | None = None,
    max_compute: float | None = None,
    max_samples_seen: float | None = None,
    fit_max_compute: float | Mapping[str, float] | None = None,
    predict: Sequence[float] = (),
    bootstrap: int = DEFAULT_BOOTSTRAP,
    level: float = DEFAULT_LEVEL,
    loss: str = "mse",
    seed: int = 0,
    leave_one_out: bool = True,
    starts: str = "seeds",
    progress: Callable[[str], None] | None = None,
) -> FitReport:
    """Fits a scaling law per group (model type by default) to the Pareto frontier of one selection.

    ``data`` is a DataFrame in the ``vlscale.scaling.results`` schema or a path to one (CSV/parquet).
    ``fit_max_compute`` (a number, or {group: number}) fits only frontier points at or below it and reports every
    frontier/best-per-compute point above it as held out. Intervals at ``predict`` come from ``bootstrap``
    resamples of the fitted points (percentile, ``level``); with ``bootstrap=0`` from the delta method.
    ``starts``: "seeds" (variable-projection seeds, fast) or "paper" (also the paper's 3200-start grid).
    """
    df = _as_table(data)
    sel = Selection(benchmark, metric, pretrain_dataset, lr_scheduler,
                    tuple(model_types) if model_types else None, tuple(models) if models else None,
                    min_compute, max_compute, max_samples_seen, x)
    predict = results_lib.parse_float_list(predict)
    _check_common(bootstrap, level)
    prep = _prepare(df, sel, group_by=group_by, groups=groups, form=form, frontier=frontier,
                    fit_max_compute=fit_max_compute, predict=predict)
    (groups_out,), secs, comp = _fit_prepared([prep], form=form, predict=predict, bootstrap=bootstrap, level=level,
                                              seed=seed, loss=loss, leave_one_out=leave_one_out, progress=progress,
                                              starts=starts)
    return FitReport(prep.selection, group_by, groups_out, form, frontier, level, bootstrap, secs, comp)


def _check_common(bootstrap: int, level: float) -> None:
    if not (0.0 < level < 1.0):
        raise ResultsError(f"interval level {level} must be in (0, 1), e.g. 0.95")
    if bootstrap < 0 or (0 < bootstrap < 20):
        raise ResultsError(f"--bootstrap {bootstrap}: use 0 (delta-method intervals) or at least 20 resamples")


# ------------------------------------------------------------------------------------------------ comparison
def _last_crossing(grid: np.ndarray, diff: np.ndarray) -> tuple[float | None, int]:
    """Compute of the last sign change of diff along grid (log-interpolated), and the index before it (-1: none)."""
    s = np.sign(diff)
    change = np.flatnonzero((s[:-1] * s[1:] < 0) | ((s[:-1] == 0) & (s[1:] != 0)))
    if change.size == 0:
        return None, -1
    k = int(change[-1])
    d0, d1 = diff[k], diff[k + 1]
    t = 0.0 if d1 == d0 else d0 / (d0 - d1)
    return float(np.exp(np.log(grid[k]) + t * (np.log(grid[k + 1]) - np.log(grid[k])))), k


def _crossings_boot(grid: np.ndarray, diffs: np.ndarray) -> np.ndarray:
    """Last crossing compute per bootstrap row (NaN where the curves do not cross), vectorised."""
    s = np.sign(diffs)
    change = (s[:, :-1] * s[:, 1:]) < 0
    has = change.any(axis=1)
    last = change.shape[1] - 1 - np.argmax(change[:, ::-1], axis=1)
    rows = np.arange(diffs.shape[0])
    d0, d1 = diffs[rows, last], diffs[rows, last + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d1 != d0, d0 / (d0 - d1), 0.0)
    lg = np.log(grid)
    out = np.exp(lg[last] + t * (lg[last + 1] - lg[last]))
    return np.where(has, out, np.nan)


def _fmt_c(c: float) -> str:
    """2.6e12, 9.9e8: two significant digits, no exponent padding."""
    m, _, e = f"{c:.2g}".partition("e")
    return f"{m}e{int(e)}" if e else m


def _compare_fitted(rep: FitReport, first: str, second: str, at: Sequence[float], level: float) -> Comparison:
    a, b = rep.groups[first], rep.groups[second]
    grid = a.grid
    at = np.asarray(at, dtype=np.float64)
    judged = float(at.max()) if at.size else float(grid[-1])
    upto = grid <= judged * (1 + 1e-12)
    diff = b.grid_pred - a.grid_pred
    boots = None
    if a.grid_boot is not None and b.grid_boot is not None:
        boots = b.grid_boot - a.grid_boot
    rows = []
    for c in (at if at.size else [judged]):
        j = int(np.argmin(np.abs(np.log(grid) - np.log(c))))
        lo = hi = float("nan")
        if boots is not None:
            lo, hi = (float(v) for v in _interval(boots[:, j], level))
        rows.append({"compute": float(c), "diff": float(diff[j]), "lo": lo, "hi": hi,
                     first: float(a.grid_pred[j]), second: float(b.grid_pred[j])})
    j_star = int(np.argmin(np.abs(np.log(grid) - np.log(judged))))
    d_star = diff[j_star]
    winner = None if d_star == 0 else (second if d_star < 0 else first)
    loser = first if winner == second else second
    cross, _ = _last_crossing(grid[upto], diff[upto])
    crossover: dict = {"compute": cross, "range": [float(grid[0]), judged]}
    agree = None
    if boots is not None:
        agree = float(np.mean(np.sign(boots[:, j_star]) == np.sign(d_star)))
        cb = _crossings_boot(grid[upto], boots[:, upto])
        crossover["fraction_crossing"] = float(np.mean(np.isfinite(cb)))
        if np.isfinite(cb).sum() >= 2:
            lo, hi = _interval(cb[np.isfinite(cb)], level)
            crossover["lo"], crossover["hi"] = float(lo), float(hi)
    if winner is None:
        verdict = f"{first} and {second} predict the same error at {_fmt_c(judged)} GFLOPs"
    else:
        where = (f"for C > {_fmt_c(cross)} GFLOPs" if cross is not None
                 else f"over the whole range up to {_fmt_c(judged)} GFLOPs")
        verdict = f"{winner} below {loser} {where}"
        if agree is not None:
            verdict += f", {100 * agree:.0f}% of bootstraps agree at {_fmt_c(judged)}"
    return Comparison(rep, first, second, rows, crossover, verdict, winner, agree, judged)


def _pair(groups: Sequence[str] | None) -> tuple[str, str] | None:
    if groups is None:
        return None
    groups = [g for g in (groups.split(",") if isinstance(groups, str) else groups) if g]
    if len(groups) != 2:
        raise ResultsError(f"compare needs exactly two groups, got {len(groups)} ({', '.join(groups)}); "
                           "pass e.g. --model-types clip,mammut")
    return groups[0], groups[1]


def compare(
    data,
    *,
    groups: Sequence[str] | None = ("clip", "mammut"),
    group_by: str = "model_type",
    at: Sequence[float] = PAPER_PREDICT_AT,
    benchmark: str | None = "imagenet1k",
    metric: str | None = None,
    pretrain_dataset: str | None = "datacomp_1b",
    **kwargs,
) -> Comparison:
    """Fits two groups on the same selection and compares them (see module doc); kwargs as for ``fit``."""
    return compare_benchmarks(data, groups=groups, group_by=group_by, at=at, benchmarks=[(benchmark, metric)],
                              pretrain_datasets=[pretrain_dataset], **kwargs).comparisons[0]


def parse_benchmark(spec: str | tuple) -> tuple[str | None, str | None]:
    """``"mscoco_captions/text_retrieval_recall@5"`` -> (dataset, metric); ``"imagenet1k"`` -> (dataset, None)."""
    if isinstance(spec, tuple):
        return spec
    ds, _, metric = spec.partition("/")
    return ds or None, metric or None


def compare_benchmarks(
    data,
    *,
    groups: Sequence[str] | None = ("clip", "mammut"),
    group_by: str = "model_type",
    at: Sequence[float] = PAPER_PREDICT_AT,
    benchmarks: Sequence = PAPER_BENCHMARKS,
    pretrain_datasets: Sequence[str | None] = ("datacomp_1b",),
    lr_scheduler: str | None = "cosine",
    model_types: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    x: str | None = None,
    form: str = "saturation_both",
    frontier: str = "bins",
    min_compute: float | None = results_lib.PAPER_MIN_COMPUTE,
    max_compute: float | None = None,
    max_samples_seen: float | None = results_lib.PAPER_MAX_SAMPLES_SEEN,
    fit_max_compute: float | Mapping[str, float] | None = None,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    level: float = DEFAULT_LEVEL,
    loss: str = "mse",
    seed: int = 0,
    leave_one_out: bool = True,
    starts: str = "seeds",
    progress: Callable[[str], None] | None = None,
) -> ComparisonSet:
    """``compare`` on every (pretrain dataset, benchmark) pair; all fits share one batched multi-start call."""
    df = _as_table(data)
    at = results_lib.parse_float_list(at)
    _check_common(bootstrap, level)
    pair = _pair(groups)
    preps = []
    for pre in pretrain_datasets:
        for bench in benchmarks:
            ds, metric = parse_benchmark(bench)
            types = pair if (pair and group_by == "model_type") else (tuple(model_types) if model_types else None)
            sel = Selection(ds, metric, None if group_by == "pretrain_dataset" else pre, lr_scheduler, types,
                            tuple(models) if models else None, min_compute, max_compute, max_samples_seen, x)
            preps.append(_prepare(df, sel, group_by=group_by, groups=pair, form=form, frontier=frontier,
                                  fit_max_compute=fit_max_compute, predict=at))
    for p in preps:
        if len(p.names) != 2:
            raise ResultsError(f"{p.selection.label()} has groups {', '.join(p.names)}; compare needs exactly two "
                               "(pass --model-types A,B)")
    fitted, secs, comp = _fit_prepared(preps, form=form, predict=at, bootstrap=bootstrap, level=level, seed=seed,
                                       loss=loss, leave_one_out=leave_one_out, progress=progress, starts=starts)
    comparisons = []
    for p, groups_out in zip(preps, fitted):
        share = secs / max(len(preps), 1)
        rep = FitReport(p.selection, group_by, groups_out, form, frontier, level, bootstrap, share, comp / len(preps))
        comparisons.append(_compare_fitted(rep, p.names[0], p.names[1], at, level))
    winners = {c.winner for c in comparisons}
    consistent = len(winners) == 1 and None not in winners
    n = len(comparisons)
    if consistent:
        w = comparisons[0].winner
        other = comparisons[0].first if w == comparisons[0].second else comparisons[0].second
        text = (f"consistent: {w} below {other} at {_fmt_c(comparisons[0].judged_at)} GFLOPs in {n}/{n} "
                f"comparison{'s' if n != 1 else ''}")
        rows = [consistency_row(c) for c in comparisons]
        if all(r["lo"] is not None and np.isfinite(r["lo"]) for r in rows):
            clear = sum((r["hi"] < 0) or (r["lo"] > 0) for r in rows)
            text += f" ({100 * level:.0f}% interval of the difference excludes 0 in {clear}/{n})"
    else:
        counts = {w: sum(c.winner == w for c in comparisons) for w in winners}
        text = "inconsistent: " + ", ".join(f"{w} wins {k}/{n}" for w, k in counts.items())
    return ComparisonSet(comparisons, consistent, text, secs, comp)
