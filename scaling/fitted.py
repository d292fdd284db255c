"""What a fit returns: ``GroupFit`` (one group's frontier, law, predictions, validation, diagnostics) and
``FitReport`` (every group of one selection). Comparisons wrap a FitReport (``comparison.py``).

Prediction dicts carry two intervals: ``lo``/``hi``, the band of the mean curve (where the law is), and
``pred_lo``/``pred_hi``, the prediction interval (where a new observation falls: the band plus the fitted points'
scatter), and ``spread_lo``/``spread_hi``, the range of the prediction over near-optimal solutions (conditioning).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from vlscale.scaling.results import Selection


@dataclasses.dataclass
class GroupFit:
    """One group's (e.g. one model type's) frontier, fit, predictions and validation."""

    name: str
    points: pd.DataFrame  # the group's selected rows (with x, error)
    frontier: np.ndarray  # bool mask over points: the frontier of every selected run
    fitted: np.ndarray  # bool mask: the points the law was fitted to
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
    grid_se: np.ndarray | None = None  # delta-method standard error over grid (bootstrap=0)
    grid_dof: int | None = None
    grid_spread_lo: np.ndarray | None = None  # range over near-optimal solutions
    grid_spread_hi: np.ndarray | None = None
    conditioning: dict = dataclasses.field(default_factory=dict)
    failed_refits: int = 0
    n_refits: int = 0
    metric_kind: str = "accuracy"
    unidentified_refits: int = 0  # bootstrap resamples with no more distinct points than parameters (left out)
    undetermined: str | None = None  # why the group has no interval (no more fitted points than parameters)
    residual_sd: float = float("nan")  # sd of log residuals of the fitted points (n - p dof; NaN without any)
    residual_dof: int = 0
    n_params: int = 0

    @property
    def n_frontier(self) -> int:
        return int(self.frontier.sum())

    def to_json(self) -> dict:
        c = self.curve
        fx = self.points["x"].to_numpy()[self.frontier]
        fy = self.points["error"].to_numpy()[self.frontier]
        order = np.argsort(fx, kind="stable")
        return {
            "form": c.form,
            "loss": c.loss,
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
            "failed_refits": int(self.failed_refits),
            "unidentified_refits": int(self.unidentified_refits),
            "undetermined": self.undetermined,
            "residual_sd": float(self.residual_sd) if np.isfinite(self.residual_sd) else None,
            "residual_dof": int(self.residual_dof),
            "conditioning": self.conditioning,
            "predictions": self.predictions,
            "heldout": self.heldout,
            "loo": self.loo,
            "allocation": self.allocation,
        }

    def loo_summary(self) -> dict | None:
        """Mean and max |error| over the leave-one-out points the law predicts inward or upward (the cheapest
        point, a downward extrapolation, is listed in ``loo`` but not summarised)."""
        kept = [r for r in self.loo if r.get("direction") != "below"]
        if not kept:
            return None
        e = np.array([r["abs_err"] for r in kept])
        return {"mean_abs_err_pp": float(100 * e.mean()), "max_abs_err_pp": float(100 * e.max()),
                "mean_abs_err": float(e.mean()), "max_abs_err": float(e.max()), "n": int(e.size)}

    def heldout_error(self) -> float | None:
        """Mean |observed - predicted| over held-out frontier points (error units), None when none."""
        e = [h["abs_err"] for h in self.heldout if h["kind"] == "frontier"]
        return float(np.mean(e)) if e else None


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
    frontier_scope: str = "fit"
    form_choice: dict | None = None  # --form auto: the candidates and why one won

    @property
    def metric_kind(self) -> str:
        return next(iter(self.groups.values())).metric_kind

    def to_json(self) -> dict:
        sel = self.selection.to_dict()
        limits = {k: g.fit_max_compute for k, g in self.groups.items()}
        same = len(set(limits.values())) == 1
        sel.update(group_by=self.group_by, frontier=self.frontier_method, frontier_scope=self.frontier_scope,
                   form=self.form, level=self.level, bootstrap=self.n_boot,
                   fit_max_compute=next(iter(limits.values())) if same else limits)
        out = {
            "groups": {k: g.to_json() for k, g in self.groups.items()},
            "selection": sel,
            "fit_seconds": float(self.fit_seconds),
            "compile_seconds": float(self.compile_seconds),
        }
        if self.form_choice is not None:
            out["form_choice"] = self.form_choice
        return out

    def summary(self) -> str:
        from vlscale.scaling import report

        return report.fit_summary(self)

    def plot(self, ax=None, path: str | Path | None = None):
        from vlscale.scaling import plots

        return plots.plot_fit(self, ax=ax, path=path)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        from vlscale.scaling import report

        return report.save_fit(self, out_dir)
