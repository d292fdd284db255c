"""Two groups fitted on one selection, compared: the difference in predicted error with its interval, the
crossover, its conditioning, and a verdict that says how strong the evidence is.

``diff = error(second) - error(first)`` (negative: second is better). A verdict is *resolved* only when the
difference is above the practical threshold, its interval excludes 0, and no pair of near-optimal solutions
reverses its sign; otherwise it says "not resolved" (or "no difference") and why.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from statistics import NormalDist

import numpy as np

from vlscale.scaling import uncertainty
from vlscale.scaling.fitted import FitReport
from vlscale.scaling.options import Options
from vlscale.scaling.report import fmt_c, fmt_diff


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
    strength: dict = dataclasses.field(default_factory=dict)

    @property
    def resolved(self) -> bool:
        return bool(self.strength.get("resolved"))

    def to_json(self) -> dict:
        out = self.fit.to_json()
        out.update(comparison=self.comparison, crossover=self.crossover, verdict=self.verdict,
                   compared=[self.first, self.second], winner=self.winner, agree=self.agree, judged_at=self.judged_at,
                   verdict_strength=self.strength)
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
        "benchmark": sel.downstream_dataset, "metric": sel.metric, "pretrain_dataset": sel.pretrain_dataset,
        "winner": c.winner, "resolved": c.resolved, "compute": c.judged_at,
        "diff": None if row is None else row["diff"], "lo": None if row is None else row["lo"],
        "hi": None if row is None else row["hi"], "crossover": c.crossover.get("compute"), "agree": c.agree,
        "verdict": c.verdict,
    }


def last_crossing(grid: np.ndarray, diff: np.ndarray) -> float | None:
    """Compute of the last sign change of diff along grid (log-interpolated), None when there is none."""
    s = np.sign(diff)
    change = np.flatnonzero((s[:-1] * s[1:] < 0) | ((s[:-1] == 0) & (s[1:] != 0)))
    if change.size == 0:
        return None
    k = int(change[-1])
    d0, d1 = diff[k], diff[k + 1]
    t = 0.0 if d1 == d0 else d0 / (d0 - d1)
    return float(np.exp(np.log(grid[k]) + t * (np.log(grid[k + 1]) - np.log(grid[k]))))


def crossings_boot(grid: np.ndarray, diffs: np.ndarray) -> np.ndarray:
    """Last crossing compute per bootstrap row (NaN where the curves do not cross), vectorised."""
    s = np.sign(diffs)
    change = (s[:, :-1] * s[:, 1:]) < 0
    has = change.any(axis=1)
    last = change.shape[1] - 1 - np.argmax(change[:, ::-1], axis=1)
    rows = np.arange(diffs.shape[0])
    d0, d1 = diffs[rows, last], diffs[rows, last + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d1 != d0, d0 / (d0 - d1), 0.0)
    t = np.where(has, t, 0.0)  # rows without a crossing: any finite value (masked below), not an overflow
    lg = np.log(grid)
    out = np.exp(lg[last] + t * (lg[last + 1] - lg[last]))
    return np.where(has, out, np.nan)


def _diff_interval(a, b, level: float, kind: str):
    """[len(grid)] lo, hi of b - a and how they were made: bootstrap pairs (independent streams; quartile-scaled
    about the point difference, see ``uncertainty.quartile_interval``), else the delta method, else NaN."""
    if a.grid_boot is not None and b.grid_boot is not None:
        lo, hi = uncertainty.quartile_interval(b.grid_boot - a.grid_boot, b.grid_pred - a.grid_pred, level)
        n = min(int(np.all(np.isfinite(g.grid_boot), axis=1).sum()) for g in (a, b))
        method = (f"{100 * level:.0f}% bootstrap interval of the difference (quartile-scaled, {n} resample "
                  "pairs or more)")
    elif a.grid_se is not None and b.grid_se is not None:
        half = uncertainty.difference_half_width(a.grid_se, a.grid_dof, b.grid_se, b.grid_dof, level)
        diff = b.grid_pred - a.grid_pred
        lo, hi = diff - half, diff + half
        method = (f"{100 * level:.0f}% delta-method interval of the difference (Welch-Satterthwaite dof from "
                  f"{a.grid_dof} and {b.grid_dof})")
    else:
        why = [f"{g.name}: {g.undetermined}" for g in (a, b) if g.undetermined]
        method = "none (" + ("; ".join(why) if why else
                             f"{a.name} and {b.name} have intervals of different kinds: "
                             f"{a.interval_method} vs {b.interval_method}") + ")"
        return np.full(a.grid.shape, np.nan), np.full(a.grid.shape, np.nan), method
    bound = 1.0 if kind == "accuracy" else np.inf  # a difference of two errors in [0, 1] lies in [-1, 1]
    return np.clip(lo, -bound, bound), np.clip(hi, -bound, bound), method


def noise_floor(a, b, j: int, level: float) -> float:
    """The narrowest half-width the fitted points' own scatter allows for the difference at grid index ``j``: a
    curve fitted to n points with residual sd s is not known better than s/sqrt(n) anywhere (the standard error of
    a mean), so b - a is not known better than z·sqrt(s_a²/n_a + s_b²/n_b) (residuals are multiplicative: s in
    error units is s_rel times the prediction). NaN when either scatter is unknown."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    var = 0.0
    for g in (a, b):
        n = int(g.fitted.sum())
        var += (g.residual_sd * g.grid_pred[j]) ** 2 / max(n, 1)
    return float(z * np.sqrt(var))


def compare_fitted(rep: FitReport, first: str, second: str, at: Sequence[float], opts: Options) -> Comparison:
    a, b = rep.groups[first], rep.groups[second]
    level, kind, grid = opts.level, rep.metric_kind, a.grid
    at = np.asarray(at, dtype=np.float64)
    judged = float(at.max()) if at.size else float(grid[-1])
    upto = grid <= judged * (1 + 1e-12)
    diff = b.grid_pred - a.grid_pred
    d_lo, d_hi, interval_method = _diff_interval(a, b, level, kind)
    env_lo = b.grid_spread_lo - a.grid_spread_hi  # the difference over near-optimal solutions of both groups
    env_hi = b.grid_spread_hi - a.grid_spread_lo
    rows = []
    for c in (at if at.size else [judged]):
        j = int(np.argmin(np.abs(np.log(grid) - np.log(c))))
        rows.append({"compute": float(c), "diff": float(diff[j]), "lo": float(d_lo[j]), "hi": float(d_hi[j]),
                     "spread_lo": float(env_lo[j]), "spread_hi": float(env_hi[j]),
                     first: float(a.grid_pred[j]), second: float(b.grid_pred[j])})
    j = int(np.argmin(np.abs(np.log(grid) - np.log(judged))))
    d_star = float(diff[j])
    threshold = opts.min_difference * (1.0 if kind == "accuracy" else max(a.grid_pred[j], b.grid_pred[j]))
    winner = None if abs(d_star) < threshold else (second if d_star < 0 else first)
    cross = last_crossing(grid[upto], diff[upto])
    crossover: dict = {"compute": cross, "range": [float(grid[0]), judged]}
    # Where the near-optimal envelopes cross; one that does not cross means some near-optimal pair never does.
    ends = [last_crossing(grid[upto], e[upto]) for e in (env_lo, env_hi)]
    found = [v for v in ends if v is not None]
    crossover["spread"] = [min(found), max(found)] if found else None
    crossover["spread_includes_no_crossing"] = len(found) < 2
    agree = None
    boots = b.grid_boot - a.grid_boot if a.grid_boot is not None and b.grid_boot is not None else None
    if boots is not None:
        ok = np.all(np.isfinite(boots), axis=1)
        agree = float(np.mean(np.sign(boots[ok, j]) == np.sign(d_star)))
        cb = crossings_boot(grid[upto], boots[ok][:, upto])
        crossover["fraction_crossing"] = float(np.mean(np.isfinite(cb)))
        if np.isfinite(cb).sum() >= 2:
            lo, hi = uncertainty.percentile_interval(cb[np.isfinite(cb)], level)
            crossover["lo"], crossover["hi"] = float(lo), float(hi)
    strength = _strength(rep, a, b, winner, d_star, float(d_lo[j]), float(d_hi[j]), float(env_lo[j]),
                         float(env_hi[j]), threshold, agree, rep.n_boot, judged)
    strength["interval"] = interval_method
    floor = noise_floor(a, b, j, level)
    strength["noise_floor"] = floor if np.isfinite(floor) else None
    if winner is not None and np.isfinite(d_lo[j]) and np.isfinite(floor) and (d_hi[j] - d_lo[j]) / 2 < floor:
        strength["reasons"].append(f"interval narrower than the residual noise allows (half-width "
                                   f"{fmt_diff((d_hi[j] - d_lo[j]) / 2, kind)} < {fmt_diff(floor, kind)})")
        strength["resolved"] = False
    verdict = _verdict(first, second, winner, d_star, cross, judged, strength, kind, level)
    return Comparison(rep, first, second, rows, crossover, verdict, winner, agree, judged, strength)


def _strength(rep, a, b, winner, d, lo, hi, env_lo, env_hi, threshold, agree, n_boot, judged) -> dict:
    reasons = [f"{g.name} {g.undetermined}" for g in (a, b) if g.undetermined]
    excludes_zero = bool(np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0))
    if winner is not None and not excludes_zero and not reasons:
        reasons.append("intervals overlap" if np.isfinite(lo) else "no interval")
    flips = bool(winner is not None and env_lo <= 0 <= env_hi)
    ill = flips or a.conditioning.get("ill_conditioned", False) or b.conditioning.get("ill_conditioned", False)
    if flips:
        reasons.append(f"ill-conditioned: near-optimal fits disagree by {fmt_diff(env_hi - env_lo, rep.metric_kind)}"
                       f" at {fmt_c(judged, 2)}")
    held = [e for e in (a.heldout_error(), b.heldout_error()) if e is not None]
    return {"resolved": bool(winner is not None and excludes_zero and not reasons), "reasons": reasons,
            "excludes_zero": excludes_zero,
            "well_conditioned": not ill, "agree": agree, "bootstrap": n_boot,
            "heldout_error": float(np.mean(held)) if held else None, "threshold": float(threshold),
            "diff_spread": [env_lo, env_hi]}


def _verdict(first, second, winner, d, cross, judged, s, kind, level) -> str:
    if winner is None:
        return (f"no difference: {first} and {second} differ by {fmt_diff(abs(d), kind)} at {fmt_c(judged, 2)} GFLOPs "
                f"(below the practical threshold {fmt_diff(s['threshold'], kind)})")
    loser = first if winner == second else second
    where = (f"for C > {fmt_c(cross, 2)} GFLOPs" if cross is not None
             else f"over the whole range up to {fmt_c(judged, 2)} GFLOPs")
    claim = f"{winner} below {loser} {where}"
    if not s["resolved"]:
        return f"not resolved: {'; '.join(s['reasons'])} (point estimate: {claim})"
    evidence = (f"{100 * s['agree']:.0f}% of bootstraps agree at {fmt_c(judged, 2)}" if s["agree"] is not None
                else f"{100 * level:.0f}% delta interval excludes 0 at {fmt_c(judged, 2)}")
    parts = [evidence]
    if s["heldout_error"] is not None:
        parts.append(f"held-out error {fmt_diff(s['heldout_error'], kind)}")
    parts.append("well-conditioned" if s["well_conditioned"] else "ill-conditioned at some prediction")
    return f"{claim} ({'; '.join(parts)})"


def consistency(comparisons: Sequence[Comparison], level: float) -> tuple[bool, str]:
    winners = {c.winner for c in comparisons}
    consistent = len(winners) == 1 and None not in winners
    n = len(comparisons)
    resolved = sum(c.resolved for c in comparisons)
    if consistent:
        first = comparisons[0]
        w = first.winner
        other = first.first if w == first.second else first.second
        text = (f"consistent: {w} below {other} at {fmt_c(first.judged_at, 2)} GFLOPs in {n}/{n} "
                f"comparison{'s' if n != 1 else ''}")
        rows = [consistency_row(c) for c in comparisons]
        if all(r["lo"] is not None and np.isfinite(r["lo"]) for r in rows):
            clear = sum((r["hi"] < 0) or (r["lo"] > 0) for r in rows)
            text += f" ({100 * level:.0f}% interval of the difference excludes 0 in {clear}/{n}; resolved in {resolved}/{n})"
    else:
        counts = {w: sum(c.winner == w for c in comparisons) for w in winners}
        text = "inconsistent: " + ", ".join(f"{w or 'no difference'}{'' if w is None else ' wins'} {k}/{n}"
                                            for w, k in counts.items())
    return consistent, text
