"""The study report: fits and comparisons of DIR/results.csv through ``vlscale.scaling.api``, written as
``report.md`` (with a "Verdict" section), a self-contained ``report.html`` (figures inlined), PNG figures under
``figures/`` and the fits as ``fit.json``.

One comparison set per schedule protocol present in the table (cosine, const, const-cooldown), so a study that
has both puts the constant-LR verdict next to the cosine one. Replicate seeds give the run-to-run noise shown next
to every difference.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np

from vlscale.runtime import csv_cells, files
from vlscale.errors import UserError
from vlscale.study import layout
from vlscale.study.plan import Plan, fmt_seconds

PROTOCOLS = ("cosine", "const", "const-cooldown")
# Columns that identify a cell of the grid except for the seed: rows equal in all of them are replicates.
CELL_KEYS = ("pretrain_dataset", "lr_scheduler", "downstream_dataset", "metric", "model", "samples_seen", "lr",
             "global_batch_size", "warmup")


def _x_column(df) -> str:
    return "compute_gflops_actual" if "compute_gflops_actual" in df.columns else "compute_gflops"


def _error(df):
    """Error per row as the fitter defines it (1 - accuracy-like values, raw losses)."""
    from vlscale.scaling import results as results_lib

    out = np.empty(len(df))
    for metric, idx in df.groupby("metric").indices.items():
        out[idx] = results_lib.error_rate(df["value"].to_numpy()[idx], metric)
    return out


def predict_targets(cfg, df) -> list[float]:
    """fit.predict values <= 10 are multiples of the table's largest compute, larger ones absolute GFLOPs."""
    cmax = float(df[_x_column(df)].max())
    return sorted({float(p) * cmax if float(p) <= 10 else float(p) for p in cfg.fit.predict})


def replicate_noise(df) -> dict[str, dict]:
    """Per benchmark: the mean standard deviation of error over seed replicates of one cell (pp), and how many."""
    keys = [k for k in CELL_KEYS if k in df.columns]
    d = df.assign(error=_error(df))
    out = {}
    for (ds, metric), g in d.groupby(["downstream_dataset", "metric"]):
        stds = [float(cell["error"].std(ddof=1)) for _, cell in g.groupby(keys) if len(cell) >= 2]
        if stds:
            out[f"{ds}/{metric}"] = {"std_pp": 100.0 * float(np.mean(stds)), "cells": len(stds)}
    return out


def _groups_max(cfg, df, sched: str) -> dict[str, float]:
    by = cfg.fit.get("group_by", "model_type")
    sub = df[df["lr_scheduler"] == sched]
    return {g: float(sub[sub[by] == g][_x_column(df)].max()) for g in cfg.fit.groups if (sub[by] == g).any()}


@dataclasses.dataclass
class ProtocolFit:
    """One schedule protocol's comparisons: the benchmarks that could be fitted (``fitted``, one ComparisonSet
    with the consistency over them) and the ones that could not, each with the reason in study-config terms."""

    benchmarks: list[str]
    fitted: object | None  # vlscale.scaling.comparison.ComparisonSet over the fitted benchmarks
    unfitted: dict[str, str]  # benchmark -> why not, and which study config field to change
    laws: dict[str, str]  # benchmark -> why its law was chosen from fit.form ("" for the first)

    @property
    def comparisons(self) -> list:
        return [] if self.fitted is None else list(self.fitted.comparisons)

    def rests_on(self) -> str:
        n, k = len(self.benchmarks), len(self.comparisons)
        return f"verdict on {k} of {n} benchmark{'s' if n != 1 else ''}"

    def to_json(self) -> dict:
        out = self.fitted.to_json() if self.fitted is not None else {"verdict": None}
        out.update(unfitted=self.unfitted, laws=self.laws, benchmarks_total=len(self.benchmarks),
                   benchmarks_fitted=len(self.comparisons))
        return out


def _what_to_change(cfg) -> str:
    """The study config fields that give a group more fitted frontier points."""
    frac, cut = cfg.fit.get("fit_fraction", None), cfg.fit.get("fit_max_compute", None)
    fields = ["add budgets to `samples_seen` or models to `models`"]
    if frac:
        fields.append(f"raise `fit.fit_fraction` (now {frac})")
    elif cut:
        fields.append(f"raise `fit.fit_max_compute` (now {cut:.3g})")
    fields.append("or list a law with fewer parameters in `fit.form`")
    return ", ".join(fields)


def _study_terms(msg: str) -> str:
    """A fitter error without its command-line advice (a study config has no such flags)."""
    first = str(msg).splitlines()[0]
    return first.split("; ")[0] if "--" in first else first


def fit_protocols(cfg, df, progress=None) -> dict:
    """{protocol: ProtocolFit} for each schedule protocol in the table ({"all": message} when the table has none
    of the benchmarks). Each benchmark gets the first law of ``fit.form`` that its groups have points to spare
    for (``form_choice.fallback``); benchmarks that share a law are fitted in one batched call, and one that
    cannot be fitted is listed with its reason while the others are fitted, reported and drawn."""
    from vlscale.scaling import api, form_choice

    by = cfg.fit.get("group_by", "model_type")
    at = predict_targets(cfg, df)
    frac = cfg.fit.get("fit_fraction", None)
    have = set(df["downstream_dataset"] + "/" + df["metric"])
    benchmarks = [b for b in cfg.fit.benchmarks if b in have]
    out = {}
    if not benchmarks:
        return {"all": f"no fit: the table has none of the benchmarks {', '.join(cfg.fit.benchmarks)}"}
    forms = [cfg.fit.form] if isinstance(cfg.fit.form, str) else list(cfg.fit.form)
    for sched in PROTOCOLS:
        if not (df["lr_scheduler"] == sched).any():
            continue
        fit_max = cfg.fit.get("fit_max_compute", None)
        if frac:
            fit_max = {g: float(frac) * m for g, m in _groups_max(cfg, df, sched).items()}
        if by == "model_type":
            datasets = sorted(df["pretrain_dataset"].unique())
            model_types = None
        else:
            datasets = [None]
            model_types = sorted(df["model_type"].unique())
        common = dict(groups=list(cfg.fit.groups), group_by=by, at=at, lr_scheduler=sched, model_types=model_types,
                      frontier=cfg.fit.frontier, min_compute=None, max_samples_seen=None, fit_max_compute=fit_max,
                      bootstrap=int(cfg.fit.bootstrap), level=float(cfg.fit.level), progress=progress)
        unfitted, laws, by_form = {}, {}, {}
        for bench in benchmarks:
            ds, metric = api.parse_benchmark(bench)
            try:
                counts = [api.fitted_counts(df, benchmark=ds, metric=metric, pretrain_dataset=p, **common)
                          for p in datasets]
            except UserError as e:
                unfitted[bench] = f"not fitted: {_study_terms(e)}"
                continue
            worst = min((c for c in counts), key=lambda c: min(c.values()))
            choice = form_choice.fallback(forms, worst)
            if choice["form"] is None:
                unfitted[bench] = f"not fitted: {choice['note']}; {_what_to_change(cfg)}"
                continue
            laws[bench] = choice["note"]
            by_form.setdefault(choice["form"], []).append(bench)
        sets = []
        for form, benches in by_form.items():
            try:
                sets.append(api.compare_benchmarks(
                    df, benchmarks=benches, pretrain_datasets=datasets, form=form, **common))
            except UserError as e:
                for b in benches:
                    unfitted[b] = f"not fitted ({form}): {_study_terms(e)}"
        order = {b: i for i, b in enumerate(benchmarks)}
        comps = sorted((c for cs in sets for c in cs.comparisons),
                       key=lambda c: order[f"{c.fit.selection.downstream_dataset}/{c.fit.selection.metric}"])
        fitted = None
        if comps:
            from vlscale.scaling.comparison import ComparisonSet, consistency

            consistent, text = consistency(comps, float(cfg.fit.level))
            fitted = ComparisonSet(comps, consistent, text, sum(cs.fit_seconds for cs in sets),
                                   sum(cs.compile_seconds for cs in sets))
        out[sched] = ProtocolFit(benchmarks, fitted, unfitted, laws)
    return out


# ------------------------------------------------------------------------------------------------ markdown
def _f(x, fmt=".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return format(x, fmt)


def _table(head: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines + [""]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _run_rows(cfg, plan: Plan, study_dir: Path, df) -> tuple[list[list], list[list], dict]:
    benches = list(cfg.fit.benchmarks)
    rows, failed = [], []
    totals = {"train_s": 0.0, "eval_s": 0.0}
    for r in plan.runs:
        st = layout.read_state(study_dir, r.name)
        final = layout.read_json(layout.run_dir(study_dir, r.name) / "final.json", {}) or {}
        totals["train_s"] += float(st.get("train_s", 0.0) or 0.0)
        totals["eval_s"] += float(st.get("eval_s", 0.0) or 0.0)
        vals = []
        for b in benches:
            ds, _, metric = b.partition("/")
            v = None
            if df is not None and "run" in df.columns:
                sub = df[(df["run"] == r.name) & (df["downstream_dataset"] == ds) & (df["metric"] == metric)]
                if len(sub):
                    v = float(sub.sort_values("samples_seen")["value"].iloc[-1])
            vals.append(_f(v, ".3f"))
        status = st.get("status", "pending")
        rows.append([f"`{r.name}`", r.model, r.schedule, r.samples, _f(r.lr), r.global_batch_size, r.warmup, r.seed,
                     status, _f(final.get("loss"), ".4f"), *vals, fmt_seconds(float(st.get("train_s", 0.0) or 0.0))])
        if status == "failed":
            failed.append([f"`{r.name}`", st.get("failed_in", ""), str(st.get("error", "")).replace("|", "/")])
    return rows, failed, totals


def _comparison_lines(c, noise: dict, level: float, laws: dict | None = None) -> list[str]:
    sel = c.fit.selection
    bench = f"{sel.downstream_dataset}/{sel.metric}"
    n = noise.get(bench)
    noise_txt = (f"run-to-run noise {n['std_pp']:.2f} pp (std over seeds, {n['cells']} cells)" if n
                 else "run-to-run noise unknown (no seed replicates)")
    law = (laws or {}).get(bench, "")
    lines = [f"- **{sel.pretrain_dataset or 'all datasets'} · {bench}**: {c.verdict}.",
             f"  - law `{c.fit.form}`" + (f" ({law})" if law else "") + "; the verdict uses the "
             + c.strength.get("interval", "interval of the difference")]
    for row in c.comparison:
        diff_pp, lo, hi = 100 * row["diff"], row["lo"], row["hi"]
        interval = (f" [{100 * lo:+.2f}, {100 * hi:+.2f}] pp ({100 * level:.0f}%)" if math.isfinite(lo) else
                    " (no interval)")
        bigger = ""
        if n:
            bigger = " — larger than the noise" if abs(diff_pp) > 2 * n["std_pp"] else " — within 2x the noise"
        lines.append(f"  - at C = {row['compute']:.3g} GFLOPs: error {c.second} − {c.first} = {diff_pp:+.2f} pp"
                     f"{interval}; {noise_txt}{bigger}")
    return lines


def _figure(c, path: Path) -> None:
    from vlscale.scaling import plots

    if not layout.WRITER:
        return
    with files.atomic_path(path) as tmp:  # a local file or an object, never half of one
        plots.plot_fit(c.fit, title_extra=c.verdict, offscreen=True).figure.savefig(tmp, dpi=90, format="png")


def build_markdown(cfg, plan: Plan, study_dir: Path, df, fits: dict, wall_s: float | None, fit_s: float) -> str:
    study_dir = layout.study_path(study_dir)
    level = float(cfg.fit.level)
    noise = replicate_noise(df) if df is not None else {}
    run_rows, failed, totals = _run_rows(cfg, plan, study_dir, df)
    n_done = sum(1 for r in run_rows if r[8] == "done")
    lines = [f"# Study `{cfg.name}`", "", str(cfg.get("description", "")), "",
             f"{len(plan.runs)} runs planned, {n_done} done, {len(failed)} failed; "
             f"{0 if df is None else len(df)} evaluated rows in `results.csv`. "
             f"Training {fmt_seconds(totals['train_s'])}, evaluation {fmt_seconds(totals['eval_s'])}, "
             f"fits {fmt_seconds(fit_s)}" + (f", this invocation {fmt_seconds(wall_s)}" if wall_s else "") + ".", ""]
    lines += ["## Verdict", ""]
    if not fits:
        lines += ["No verdict: the study has no evaluated results yet (`vlscale study status DIR`).", ""]
    for sched, pf in fits.items():
        if isinstance(pf, str):
            lines += [f"**{sched}**: {pf}", ""]
            continue
        cs = pf.fitted
        head = f"**{sched}** protocol — {pf.rests_on()}"
        lines += [head + (f": {cs.consistency}" if cs is not None else ": no benchmark could be fitted"), ""]
        for c in pf.comparisons:
            lines += _comparison_lines(c, noise, level, pf.laws)
        for bench, why in pf.unfitted.items():
            lines.append(f"- **{bench}**: {why}.")
        lines.append("")
    real = {k: v for k, v in fits.items() if not isinstance(v, str) and v.comparisons}
    if len(real) > 1:
        lines += ["### Protocols side by side", "",
                  "The paper's claim: the constant-LR comparison agrees with the cosine one at a fraction of the cost.",
                  ""]
        rows = []
        for sched, pf in real.items():
            for c in pf.comparisons:
                s = c.fit.selection
                rows.append([sched, f"{s.downstream_dataset}/{s.metric}", c.winner or "–",
                             _f(100 * c.comparison[-1]["diff"], "+.2f"), _f(c.agree, ".2f"),
                             "yes" if c.resolved else "no"])
        lines += _table(["protocol", "benchmark", "lower error", "diff (pp)", "bootstrap agreement", "resolved"], rows)
    # Figures.
    fig_dir = study_dir / "figures"
    if layout.WRITER:
        fig_dir.mkdir(parents=True, exist_ok=True)
    if real:
        lines += ["## Error vs compute", "",
                  "Per fitted benchmark and protocol: every evaluated checkpoint, the frontier, the fitted law with "
                  f"its {100 * level:.0f}% band, and the held-out points above the fit range.", ""]
    for sched, pf in real.items():
        for c in pf.comparisons:
            s = c.fit.selection
            name = _slug(f"{sched}_{s.pretrain_dataset or 'all'}_{s.downstream_dataset}_{s.metric}") + ".png"
            _figure(c, fig_dir / name)
            lines += [f"![{sched} {s.downstream_dataset} {s.metric}](figures/{name})", ""]
    # Laws, held-out, allocation.
    for sched, pf in real.items():
        law_rows, held_rows, alloc_rows = [], [], []
        for c in pf.comparisons:
            s = c.fit.selection
            bench = f"{s.downstream_dataset}/{s.metric}"
            for g, gf in c.fit.groups.items():
                p = gf.curve.params
                pred = gf.predictions[-1] if gf.predictions else {}
                cv = gf.curve
                law_rows.append([bench, g, f"`{cv.form}`: " + ", ".join(f"{k}={_f(float(v))}" for k, v in p.items()),
                                 f"{int(gf.fitted.sum())}/{gf.n_frontier}",
                                 f"{cv.converged_starts}/{cv.n_starts}, rms {_f(math.sqrt(cv.mse), '.2g')}"
                                 + (f", at bound: {', '.join(cv.at_bound)}" if cv.at_bound else ""),
                                 gf.interval_method,
                                 f"{_f(pred.get('error'), '.3f')} [{_f(pred.get('lo'), '.3f')}, "
                                 f"{_f(pred.get('hi'), '.3f')}] at {_f(pred.get('compute'))}"])
                for h in gf.heldout:
                    inside = h["inside_interval"]
                    held_rows.append([bench, g, h["model"], _f(h["compute"]), _f(h["observed"], ".3f"),
                                      _f(h["predicted"], ".3f"), f"[{_f(h['pred_lo'], '.3f')}, {_f(h['pred_hi'], '.3f')}]",
                                      _f(h["abs_err_pp"], ".2f"),
                                      "–" if inside is None else "yes" if inside else "no"])
                d = gf.allocation.get("D_opt")
                if d:
                    alloc_rows.append([bench, g, f"D_opt ∝ C^{d['slope']:.3f}",
                                       ", ".join(f"{q['value']:.3g} at {q['compute']:.3g}" for q in d["predictions"])])
        frac, cut = cfg.fit.get("fit_fraction", None), cfg.fit.get("fit_max_compute", None)
        held = (f"frontier points above {frac} of each group's largest compute are held out" if frac else
                f"frontier points above {cut:.3g} GFLOPs are held out" if cut else "every frontier point is fitted")
        lines += [f"## Fitted laws ({sched})", "",
                  f"Each benchmark's law on the `{cfg.fit.frontier}` frontier; {held}. Converged: starts that "
                  "reach the best objective (of all starts); rms: root-mean-square residual of the error; "
                  f"interval: how the {100 * level:.0f}% band of the curve was made (\"undetermined\" where a group "
                  "has no more fitted points than the law has parameters).", ""]
        lines += _table(["benchmark", "group", "law and parameters", "fitted/frontier", "converged, rms", "interval",
                         f"predicted error [{100 * level:.0f}% band]"], law_rows)
        lines += [f"### Held-out points ({sched})", "",
                  "How well each law predicted points it never saw: observed vs predicted error, and whether the "
                  f"observation falls inside the {100 * level:.0f}% prediction interval shown (where a new "
                  "observation is expected: the curve's band plus the fitted points' scatter).", ""]
        lines += (_table(["benchmark", "group", "model", "compute", "observed", "predicted",
                          f"{100 * level:.0f}% prediction interval", "|err| pp", "inside the prediction interval"],
                         held_rows) if held_rows else ["No points above the fit range.", ""])
        lines += [f"### Compute-optimal samples D_opt(C) ({sched})", ""]
        lines += (_table(["benchmark", "group", "law", "D_opt at the targets"], alloc_rows) if alloc_rows
                  else ["Not enough model sizes on the frontier for an allocation fit.", ""])
    lines += ["## Runs", ""]
    head = ["run", "model", "schedule", "samples", "lr", "batch", "warm-up", "seed", "status", "final loss",
            *[f"{b} (final)" for b in cfg.fit.benchmarks], "train time"]
    lines += _table(head, run_rows)
    if failed:
        lines += ["## Failed runs", ""] + _table(["run", "stage", "error"], failed)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ html
def _inline(text: str) -> str:
    t = html.escape(text, quote=False)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def markdown_to_html(md: str, base: Path, title: str) -> str:
    """The small markdown subset the report uses, with figures inlined as base64 PNG (one self-contained file)."""
    out, in_table, in_list = [], False, False
    for line in md.splitlines():
        if in_table and not line.startswith("|"):
            out.append("</table></div>")
            in_table = False
        if in_list and not line.startswith(("- ", "  - ")):
            out.append("</ul>")
            in_list = False
        m = re.match(r"^(#{1,3}) (.*)$", line)
        img = re.match(r"^!\[(.*)\]\((.*)\)$", line)
        if m:
            n = len(m.group(1))
            out.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
        elif img:
            data = base64.b64encode((base / img.group(2)).read_bytes()).decode()
            out.append(f'<p><img alt="{html.escape(img.group(1))}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            if set(line) <= set("|-"):
                continue
            if not in_table:
                out.append('<div class="table"><table>')
                in_table = True
                # long benchmark names in headers may break after "/" and "_" (not inside words)
                out.append("<tr>" + "".join(f"<th>{_inline(c).replace('/', '/<wbr>').replace('_', '_<wbr>')}</th>"
                                            for c in cells) + "</tr>")
            else:
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
        elif line.startswith(("- ", "  - ")):
            if not in_list:
                out.append("<ul>")
                in_list = True
            cls = ' class="sub"' if line.startswith("  ") else ""
            out.append(f"<li{cls}>{_inline(line.lstrip()[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if in_table:
        out.append("</table></div>")
    if in_list:
        out.append("</ul>")
    # Tables stay inside the page: a wide one scrolls in its own box, long cells (run names) wrap.
    style = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em}"
             "div.table{max-width:100%;overflow-x:auto}"
             "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px}"
             "td code{overflow-wrap:anywhere}td{max-width:30em}"
             "img{max-width:100%}li.sub{margin-left:2em}code{font-size:90%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


# ------------------------------------------------------------------------------------------------ entry
def write_report(cfg, plan: Plan, study_dir: str | Path, *, wall_s: float | None = None,
                 progress: Callable[[str], None] | None = None) -> Path:
    """Fits, compares and writes DIR/report.md, report.html, figures/*.png and fit.json; returns report.md."""
    import pandas as pd

    study_dir = layout.study_path(study_dir)
    path = study_dir / layout.RESULTS_FILE
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    df = csv_cells.restore_frame(pd.read_csv(io.StringIO(text))) if text else None
    t0 = time.perf_counter()
    fits = fit_protocols(cfg, df, progress=progress) if df is not None and len(df) else {}
    fit_s = time.perf_counter() - t0
    md = build_markdown(cfg, plan, study_dir, df, fits, wall_s, fit_s)
    layout.write_text(study_dir / "report.md", md)
    layout.write_text(study_dir / "report.html", markdown_to_html(md, study_dir, f"study {cfg.name}"))
    fit_json = {k: (v if isinstance(v, str) else v.to_json()) for k, v in fits.items()}
    from vlscale.scaling.report import _clean  # NaN (no interval) -> null: strict JSON

    layout.write_text(study_dir / "fit.json",
                      json.dumps(_clean(fit_json), indent=1, default=_json_default, allow_nan=False) + "\n")
    return study_dir / "report.md"


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
