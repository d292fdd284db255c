"""fit.tex: a booktabs table of the fitted parameters and predictions, like the paper's tables.

Numbers inside a cell's math (the header's predicted-error columns) are written without their own $...$, so the
table never nests math mode.
"""

from __future__ import annotations

import math


def _formula(form: str) -> str:
    from vlscale.scaling.forms import FORMS

    return FORMS[form].formula if form in FORMS else form


def latex_table(reps, caption: str | None = None) -> str:
    """Booktabs table: one row per (benchmark, dataset, group) with the fitted parameters and predictions."""
    reps = list(reps)
    pnames = list(next(iter(reps[0].groups.values())).curve.params)
    pred_c = [p["compute"] for p in next(iter(reps[0].groups.values())).predictions]
    multi = len(reps) > 1
    head = (["Benchmark", "Dataset"] if multi else []) + ["Model"] + [f"${k}$" for k in pnames] \
        + [f"$\\hat E({_latex_num(c, math=False)})$" for c in pred_c]
    lines = ["\\begin{table}[t]", "\\centering", "\\small",
             "\\begin{tabular}{" + "l" * (3 if multi else 1) + "r" * (len(head) - (3 if multi else 1)) + "}",
             "\\toprule", " & ".join(head) + " \\\\", "\\midrule"]
    for rep in reps:
        sel = rep.selection
        for g in rep.groups.values():
            cells = ([_latex_escape(f"{sel.downstream_dataset} {sel.metric}"), _latex_escape(sel.pretrain_dataset or "")]
                     if multi else [])
            cells.append(_latex_escape(g.name))
            cells += [_latex_num(g.curve.params[k], sig=4) for k in pnames]
            for p in g.predictions:
                band = f" [{p['lo']:.3f}, {p['hi']:.3f}]" if math.isfinite(p["lo"]) else ""
                cells.append(f"{p['error']:.3f}{band}")
            lines.append(" & ".join(cells) + " \\\\")
        if multi:
            lines.append("\\midrule" if rep is not reps[-1] else "")
    lines = [ln for ln in lines if ln]
    form = reps[0].form
    cap = caption or (f"Fitted {_latex_escape(form)} law $E(C) = {_formula_latex(form)}$ on the Pareto frontier "
                      f"({_latex_escape(reps[0].frontier_method)}); predicted error with "
                      f"{100 * reps[0].level:.0f}\\% intervals.")
    lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{cap}}}", "\\label{tab:scaling-fit}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _formula_latex(form: str) -> str:
    return {"saturation_both": "a\\,(C+b)^{c} + d", "saturation": "a\\,(C+b)^{c}", "power": "a\\,C^{c}",
            "power_floor": "a\\,C^{c} + d"}.get(form, _latex_escape(_formula(form)))


def _latex_num(v: float, sig: int = 3, math: bool = True) -> str:
    """A number for LaTeX; ``math=False`` when the caller is already inside $...$ (no nested math mode)."""
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.{sig}g}"
    m, e = f"{v:.{sig - 1}e}".split("e")
    m = m.rstrip("0").rstrip(".")
    body = f"10^{{{int(e)}}}" if m == "1" else f"{m}\\times10^{{{int(e)}}}"
    return f"${body}$" if math else body


def _latex_escape(s: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("_", "\\_"), ("&", "\\&"), ("%", "\\%"), ("#", "\\#"), ("@", "@")):
        s = s.replace(a, b)
    return s
