"""Writers for fits and comparisons: console text, fit.json, fit.csv and a LaTeX table like the paper's.

Files written by ``save_*`` into OUT/:

* ``fit.json`` -- the contract other tools read: ``{"groups": {NAME: {"form", "params", "objective", "n_points",
  "n_frontier", "frontier", "converged_starts", "predictions", "heldout", ...}}, "selection", "fit_seconds",
  "compile_seconds"}``; comparisons add ``comparison``, ``crossover``, ``verdict`` (and, over several benchmarks,
  ``benchmarks`` and ``consistency``).
* ``fit.csv`` -- one row per (benchmark, pretrain dataset, group): parameters, counts, predictions with intervals.
* ``fit.tex`` -- booktabs table of the fitted parameters and predictions.
* ``fit.png`` / ``fit.pdf`` -- the figure (see ``plots``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from vlscale.runtime import csv_cells
from vlscale.scaling.latex import latex_table  # noqa: F401 (report.latex_table is part of the API)

# ------------------------------------------------------------------------------------------------ number formats


def fmt_c(c: float | None, sig: int = 3) -> str:
    """Compute in GFLOPs, compact: 2.59e12 (``sig`` significant digits, no exponent padding)."""
    if c is None or (isinstance(c, float) and not math.isfinite(c)):
        return "-"
    m, _, e = f"{c:.{sig}g}".partition("e")
    return f"{m}e{int(e)}" if e else m


def fmt_p(v: float) -> str:
    """A fitted parameter: 4 significant digits, scientific when large or small."""
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.4g}"
    m, _, e = f"{v:.3e}".partition("e")
    return f"{m}e{int(e)}"


def fmt_err(v: float, lo: float | None = None, hi: float | None = None) -> str:
    """An error rate with its interval: 0.1839 [0.1721, 0.2086]."""
    s = f"{v:.4f}"
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        s += f" [{lo:.4f}, {hi:.4f}]"
    return s


def fmt_pp(v: float, lo: float | None = None, hi: float | None = None) -> str:
    """A difference of error rates in percentage points with its interval: -1.98 [-4.35, +0.41]."""
    s = f"{100 * v:+.2f}"
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        s += f" [{100 * lo:+.2f}, {100 * hi:+.2f}]"
    return s


def is_accuracy(kind: str) -> bool:
    return kind == "accuracy"


def fmt_diff(v: float, kind: str) -> str:
    """A difference of errors: percentage points for accuracy-like metrics, raw units for losses and scores."""
    return f"{100 * v:.2f} pp" if is_accuracy(kind) else f"{v:.4g}"


def fmt_delta(v: float, lo: float | None, hi: float | None, kind: str) -> str:
    """A signed difference with its interval, in the metric's unit (pp only for accuracy-like metrics)."""
    if is_accuracy(kind):
        return fmt_pp(v, lo, hi)
    s = f"{v:+.4g}"
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        s += f" [{lo:+.4g}, {hi:+.4g}]"
    return s


def unit(kind: str) -> str:
    return "pp" if is_accuracy(kind) else "(metric units)"


def table(rows: list[list[str]], header: list[str], indent: str = "  ") -> str:
    """Plain aligned text table (first column left-aligned, the rest right-aligned)."""
    cols = list(zip(*([header] + rows))) if rows else [[h] for h in header]
    widths = [max(len(str(v)) for v in col) for col in cols]

    def line(vals):
        cells = [str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(vals, widths))]
        return indent + "  ".join(cells).rstrip()

    out = [line(header), indent + "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ console text


def _formula(form: str) -> str:
    from vlscale.scaling.forms import FORMS

    return FORMS[form].formula if form in FORMS else form


def fit_summary(rep, *, title: bool = True) -> str:
    """Everything a user needs from one FitReport, as text."""
    sel = rep.selection
    lines = []
    if title:
        lines.append(f"== {sel.label()} ==")
        lines.append(f"   error = {_error_label(rep)} vs C = {sel.x} [GFLOPs]; law {rep.form}: E(C) = "
                     f"{_formula(rep.form)}; frontier: {rep.frontier_method} (scope: {rep.frontier_scope})")
        if rep.form_choice:
            lines.append(form_choice_summary(rep.form_choice))
    groups = list(rep.groups.values())
    pnames = list(groups[0].curve.params)
    rows = []
    for g in groups:
        c = g.curve
        rows.append([g.name, len(g.points), g.n_frontier, int(g.fitted.sum())]
                    + [fmt_p(c.params[k]) for k in pnames]
                    + [f"{c.converged_starts}/{c.n_starts}", ",".join(c.at_bound) or "-"])
    lines.append(table(rows, ["group", "points", "frontier", "fitted", *pnames, "converged", "at bound"]))
    if groups[0].predictions:
        lines.append("")
        methods = list(dict.fromkeys(g.interval_method for g in groups))
        method = methods[0] if len(methods) == 1 else "; ".join(f"{g.name}: {g.interval_method}" for g in groups)
        lines.append(f"   predicted error: curve [{100 * rep.level:.0f}% band: {method}], "
                     f"new observation [{100 * rep.level:.0f}% prediction interval], near-optimal fits "
                     f"[spread within {100 * groups[0].conditioning.get('tolerance', 0):.0f}% of the best objective]")
        rows = []
        for g in groups:
            for p in g.predictions:
                rows.append([g.name, fmt_c(p["compute"]), fmt_err(p["error"], p["lo"], p["hi"]),
                             _fmt_range(p["pred_lo"], p["pred_hi"]), _fmt_range(p["spread_lo"], p["spread_hi"])])
        lines.append(table(rows, ["group", "C [GFLOPs]", "curve [band]", "prediction interval", "near-optimal spread"]))
    for g in groups:
        if g.undetermined:
            lines.append(f"   note: {g.name} has no interval: {g.undetermined}")
        elif g.unidentified_refits:
            lines.append(f"   note: {g.unidentified_refits} of {g.n_refits} bootstrap resamples of {g.name} had no more "
                         f"distinct points than the {g.n_params} parameters (they interpolate or do not identify the "
                         f"law) and were left out; interval: {g.interval_method}")
        if g.failed_refits:
            lines.append(f"   note: {g.failed_refits} of {g.n_refits} bootstrap refits of {g.name} ended with a "
                         "non-finite objective and were left out of the intervals")
    lines += conditioning_lines(rep)
    held = heldout_summary(rep)
    if held:
        lines.append("")
        lines.append(held)
    loo = [(g.name, g.loo_summary()) for g in groups if g.loo_summary()]
    if loo:
        kind = rep.metric_kind
        lines.append("")
        lines.append("   leave-one-out over the fitted frontier (all but the cheapest point): " + "; ".join(
            f"{n} {fmt_diff(s['mean_abs_err'], kind)} mean, {fmt_diff(s['max_abs_err'], kind)} max ({s['n']} points)"
            for n, s in loo))
    alloc = [(g.name, g.allocation) for g in groups if g.allocation]
    if alloc:
        parts = []
        for n, a in alloc:
            d, m = a.get("D_opt"), a.get("N_opt")
            if d and m:
                parts.append(f"{n} D_opt ∝ C^{d['slope']:.2f}, N_opt ∝ C^{m['slope']:.2f}")
        if parts:
            lines.append("   compute-optimal allocation on the fitted frontier (N = GFLOPs/sample): " + "; ".join(parts))
            c_last = alloc[0][1]["D_opt"]["predictions"][-1]["compute"] if alloc[0][1]["D_opt"]["predictions"] else None
            if c_last is not None:
                lines.append(f"   at C = {fmt_c(c_last)}: " + "; ".join(
                    f"{n} D_opt = {a['D_opt']['predictions'][-1]['value']:.3g} samples, "
                    f"N_opt = {a['N_opt']['predictions'][-1]['value']:.3g} GFLOPs/sample" for n, a in alloc))
    return "\n".join(lines)


def _error_label(rep) -> str:
    from vlscale.scaling import metrics

    m = metrics.lookup(rep.selection.metric or "")
    kind = rep.metric_kind
    if kind == "accuracy":
        return f"1 - {rep.selection.metric}"
    if kind == "score" and m is not None:
        return f"error({rep.selection.metric})"
    return str(rep.selection.metric)


def _fmt_signed_range(lo: float, hi: float, kind: str) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "-"
    return f"[{100 * lo:+.2f}, {100 * hi:+.2f}]" if is_accuracy(kind) else f"[{lo:+.4g}, {hi:+.4g}]"


def _fmt_range(lo: float, hi: float) -> str:
    return f"[{lo:.4f}, {hi:.4f}]" if math.isfinite(lo) and math.isfinite(hi) else "-"


def conditioning_lines(rep) -> list[str]:
    """A plain warning per ill-conditioned group: near-optimal fits disagree by more than the band is wide."""
    out = []
    for g in rep.groups.values():
        c = g.conditioning
        if c.get("ill_conditioned"):
            out.append(f"   warning: {g.name} is ill-conditioned: near-optimal fits (objective within "
                       f"{100 * c['tolerance']:.0f}% of the best, {c['n_solutions']} solutions) disagree by "
                       f"{fmt_diff(c['max_spread'], rep.metric_kind)} at {fmt_c(c['at'], 2)}, more than the "
                       f"{100 * rep.level:.0f}% band is wide; a lower objective is not a better law here")
    return out


def form_choice_summary(choice: dict) -> str:
    rows = [[c["form"], c["loss"], "-" if c["error"] is None else f"{100 * c['error']:.1f}%", c.get("note", "")]
            for c in choice["candidates"]]
    return (f"   form chosen by leave-future-out error (each candidate fitted without each group's largest-compute "
            f"{100 * choice['future_share']:.0f}% of fitted frontier points, then predicting them; mean relative "
            f"error): "
            f"{choice['form']} / {choice['loss']}\n"
            + table(rows, ["form", "objective", "future error", "note"], indent="     "))


def heldout_summary(rep) -> str:
    """The held-out validation table (empty string when nothing is held out)."""
    rows = []
    limits = set()
    kind = rep.metric_kind
    for g in rep.groups.values():
        if g.fit_max_compute is not None:
            limits.add(g.fit_max_compute)
        for h in g.heldout:
            rows.append([g.name, h["model"], fmt_c(h["samples_seen"]), fmt_c(h["compute"]), h["kind"],
                         f"{h['observed']:.4f}", f"{h['predicted']:.4f}", _fmt_range(h["pred_lo"], h["pred_hi"]),
                         fmt_diff(h["abs_err"], kind), f"{100 * h['rel_err']:.1f}%",
                         "-" if h["inside_interval"] is None else "yes" if h["inside_interval"] else "no"])
    if not rows:
        return ""
    lim = ", ".join(fmt_c(v) for v in sorted(limits))
    scope = ("frontier of runs <= the limit" if rep.frontier_scope == "fit"
             else "frontier of all runs (the paper's)")
    head = (f"   held-out validation: fitted on frontier points with C <= {lim} ({scope}); every frontier (and "
            f"best-per-compute) point above it, against the {100 * rep.level:.0f}% prediction interval:")
    level = f"{100 * rep.level:.0f}%"
    return head + "\n" + table(rows, ["group", "model", "samples", "C [GFLOPs]", "kind", "observed", "predicted",
                                      f"{level} prediction interval", "|err|", "rel err",
                                      "in prediction interval"])


def comparison_summary(cmp, *, with_fit: bool = True) -> str:
    lines = [fit_summary(cmp.fit)] if with_fit else []
    rows = []
    kind = cmp.fit.metric_kind
    for r in cmp.comparison:
        rows.append([fmt_c(r["compute"]), f"{r[cmp.first]:.4f}", f"{r[cmp.second]:.4f}",
                     fmt_delta(r["diff"], r["lo"], r["hi"], kind), _fmt_signed_range(r["spread_lo"], r["spread_hi"], kind)])
    lines.append("")
    lines.append(f"   {cmp.second} - {cmp.first} (negative: {cmp.second} has lower error)")
    lines.append(table(rows, ["C [GFLOPs]", cmp.first, cmp.second, f"difference {unit(kind)} [interval]",
                              "near-optimal range"]))
    cr = cmp.crossover
    if cr.get("compute") is not None:
        ci = f" [{fmt_c(cr['lo'])}, {fmt_c(cr['hi'])}]" if "lo" in cr else ""
        frac = f", curves cross in {100 * cr['fraction_crossing']:.0f}% of bootstraps" if "fraction_crossing" in cr else ""
        spread = ""
        if cr.get("spread"):
            lo_c, hi_c = cr["spread"]
            spread = f"; near-optimal fits put it at {fmt_c(lo_c)}" + (f"-{fmt_c(hi_c)}" if hi_c != lo_c else "")
            if cr.get("spread_includes_no_crossing"):
                spread += " or nowhere"
        lines.append(f"   crossover at C = {fmt_c(cr['compute'])} GFLOPs{ci}{frac}{spread}")
    else:
        lines.append(f"   no crossover between {fmt_c(cr['range'][0])} and {fmt_c(cr['range'][1])} GFLOPs")
    if cmp.strength.get("interval"):
        lines.append(f"   the verdict uses the {cmp.strength['interval']}")
    lines.append(f"   verdict: {cmp.verdict}")
    return "\n".join(lines)


def comparison_set_summary(cs) -> str:
    from vlscale.scaling.comparison import consistency_row

    blocks = [comparison_summary(c) for c in cs.comparisons]
    rows = []
    for c in cs.comparisons:
        r = consistency_row(c)
        kind = c.fit.metric_kind
        rows.append([r["pretrain_dataset"] or "-", f"{r['benchmark']} {r['metric']}", r["winner"] or "-",
                     fmt_delta(r["diff"], r["lo"], r["hi"], kind) if r["diff"] is not None else "-",
                     fmt_c(r["crossover"]), "-" if r["agree"] is None else f"{100 * r['agree']:.0f}%",
                     "yes" if r["resolved"] else "no"])
    first = cs.comparisons[0]
    n = len(cs.comparisons)
    cons = [f"== consistency across {n} comparison{'s' if n != 1 else ''} "
            f"({first.second} - {first.first} at C = {fmt_c(first.judged_at)} GFLOPs) ==",
            table(rows, ["pretrain", "benchmark", "lower error", "difference [interval]", "crossover",
                         "bootstraps agree", "resolved"]),
            f"   {cs.consistency}",
            f"   fit time {cs.fit_seconds:.1f} s (of which JAX compilation {cs.compile_seconds:.1f} s)"]
    return "\n\n".join(blocks + ["\n".join(cons)])


# ------------------------------------------------------------------------------------------------ files


def _json_default(o):
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o):
    """NaN/inf -> None so fit.json is strict JSON."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, (float, np.floating)) and not math.isfinite(float(o)):
        return None
    return o


def write_json(obj: dict, path: Path) -> Path:
    path.write_text(json.dumps(_clean(obj), indent=1, default=_json_default, allow_nan=False) + "\n")
    return path


def csv_rows(rep, extra: dict | None = None) -> list[dict]:
    rows = []
    sel = rep.selection
    for g in rep.groups.values():
        row = {"benchmark": sel.downstream_dataset, "metric": sel.metric, "pretrain_dataset": sel.pretrain_dataset,
               "lr_scheduler": sel.lr_scheduler, "group": g.name, "form": g.curve.form}
        row.update({f"param_{k}": v for k, v in g.curve.params.items()})
        row.update(objective=g.curve.objective, n_points=len(g.points), n_frontier=g.n_frontier,
                   n_fitted=int(g.fitted.sum()), fit_max_compute=g.fit_max_compute,
                   converged_starts=g.curve.converged_starts)
        for p in g.predictions:
            c = fmt_c(p["compute"])
            row[f"error@{c}"], row[f"lo@{c}"], row[f"hi@{c}"] = p["error"], p["lo"], p["hi"]
        loo = g.loo_summary()
        row["loo_mean_abs_err_pp"] = loo["mean_abs_err_pp"] if loo else None
        if g.heldout:
            row["heldout_mean_abs_err_pp"] = float(np.mean([h["abs_err_pp"] for h in g.heldout]))
        if extra:
            row.update(extra)
        rows.append(row)
    return rows


def _save_common(reps, out_dir, json_obj, figure: dict) -> dict[str, Path]:
    """Every file of one fit or comparison; the figure by the current ``render_worker`` when there is one (it
    draws while the tables are written), else here, and here again if the worker did not deliver."""
    from vlscale.scaling import plots, render_worker

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    renderer = render_worker.current()
    handed_over = renderer is not None and renderer.submit([(figure, out)])
    paths = {"json": write_json(json_obj, out / "fit.json")}
    rows = [r for rep in reps for r in csv_rows(rep)]
    csv_cells.write_frame(pd.DataFrame(rows), out / "fit.csv")
    paths["csv"] = out / "fit.csv"
    (out / "fit.tex").write_text(latex_table(reps))
    paths["tex"] = out / "fit.tex"
    if handed_over and renderer.finish():
        paths.update(png=out / "fit.png", pdf=out / "fit.pdf")
    else:
        paths.update(plots.save_figure(figure, out))
    return paths


def save_fit(rep, out_dir) -> dict[str, Path]:
    from vlscale.scaling import plots

    return _save_common([rep], out_dir, rep.to_json(), plots.fit_figure(rep))


def save_comparison(cmp, out_dir) -> dict[str, Path]:
    from vlscale.scaling import plots

    return _save_common([cmp.fit], out_dir, cmp.to_json(), plots.fit_figure(cmp.fit, title_extra=cmp.verdict))


def save_comparison_set(cs, out_dir) -> dict[str, Path]:
    from vlscale.scaling import plots

    return _save_common([c.fit for c in cs.comparisons], out_dir, cs.to_json(), plots.comparison_set_figure(cs))
