"""Figures of fitted scaling laws (matplotlib, log-log error vs compute), in the style of the paper's Fig. 1.

Per group (one colour each): every evaluated point faint, frontier points solid, the fitted curve solid over the
fitted compute range and dashed beyond it, the interval as a band, held-out points as open markers, and a dotted
vertical line at ``fit_max_compute``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# The paper's colours (scaling_laws/constants.py: seaborn tab10 indices) so figures read the same.
GROUP_COLOURS = {"mammut": "tab:blue", "coca": "tab:orange", "clip": "tab:green", "siglip": "tab:pink",
                 "cap": "tab:gray", "datacomp_1b": "tab:red", "relaion2b-en": "tab:purple"}
FALLBACK_COLOURS = ("tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                    "tab:olive", "tab:cyan", "tab:gray")
PNG_DPI = 130


def _colour(name: str, i: int) -> str:
    return GROUP_COLOURS.get(name, FALLBACK_COLOURS[i % len(FALLBACK_COLOURS)])


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg") and not _interactive():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _interactive() -> bool:
    try:  # Colab / Jupyter keep their inline backend
        from IPython import get_ipython

        return get_ipython() is not None
    except Exception:
        return False


def _ylabel(rep) -> str:
    sel = rep.selection
    what = f"{sel.downstream_dataset} {sel.metric}"
    return f"{what} error (1 - value)" if rep.metric_kind == "accuracy" else f"{what} (error)"


def wrap_title(text: str, width: int) -> str:
    """Long verdicts wrap onto several lines instead of running off the figure."""
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def draw_fit(ax, rep, *, legend: bool = True, title: str | None = None, compact: bool = False) -> None:
    """Draws one FitReport onto ``ax``."""
    for i, (name, g) in enumerate(rep.groups.items()):
        col = _colour(name, i)
        x, y = g.points["x"].to_numpy(), g.points["error"].to_numpy()
        ax.scatter(x, y, s=8 if compact else 12, color=col, alpha=0.18, linewidths=0, zorder=1)
        fm = g.fitted
        ax.scatter(x[fm], y[fm], s=18 if compact else 26, color=col, edgecolors="white", linewidths=0.5, zorder=4,
                   label=f"{name} frontier ({int(fm.sum())} fitted)")
        if g.heldout:
            hx = [h["compute"] for h in g.heldout]
            hy = [h["observed"] for h in g.heldout]
            ax.scatter(hx, hy, s=50 if compact else 70, facecolors="none", edgecolors=col, linewidths=1.6,
                       marker="D", zorder=5, label=f"{name} held out")
        grid = g.grid
        lo_fit, hi_fit = x[fm].min(), x[fm].max()
        inside = (grid >= lo_fit) & (grid <= hi_fit)
        beyond = grid >= hi_fit
        ax.plot(grid[inside], g.grid_pred[inside], color=col, lw=1.8, zorder=3)
        ax.plot(grid[beyond], g.grid_pred[beyond], color=col, lw=1.8, ls="--", zorder=3)
        if np.isfinite(g.grid_lo).any():
            ax.fill_between(grid, g.grid_lo, g.grid_hi, color=col, alpha=0.15, linewidths=0, zorder=2)
        for pr in g.predictions:
            ax.errorbar([pr["compute"]], [pr["error"]],
                        yerr=[[max(pr["error"] - pr["lo"], 0)], [max(pr["hi"] - pr["error"], 0)]]
                        if np.isfinite(pr["lo"]) else None,
                        fmt="*", ms=9 if compact else 11, color=col, mec="black", mew=0.5, capsize=2, zorder=6)
    limits = {g.fit_max_compute for g in rep.groups.values() if g.fit_max_compute is not None}
    for lim in limits:
        ax.axvline(lim, color="0.4", ls=":", lw=1, zorder=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ys = np.concatenate([g.points["error"].to_numpy() for g in rep.groups.values()])
    fr = np.concatenate([g.points["error"].to_numpy()[g.frontier] for g in rep.groups.values()])
    preds = np.concatenate([g.grid_pred for g in rep.groups.values()])
    ymin = max(min(fr.min(), np.nanmin(preds)) * 0.85, 1e-4)
    ax.set_ylim(ymin, min(ys.max() * 1.08, 1.05))
    ax.set_xlabel("Compute C [GFLOPs]" if compact else f"Compute C [GFLOPs] ({rep.selection.x})",
                  fontsize=9 if compact else 10)
    ax.set_ylabel("error" if compact else _ylabel(rep), fontsize=9 if compact else 10)
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.grid(True, which="both", ls="--", lw=0.4, alpha=0.6)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    if title:
        ax.set_title(title, fontsize=9 if compact else 10)
    if legend:
        from matplotlib.lines import Line2D

        handles, labels = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="0.3", lw=1.8), Line2D([], [], color="0.3", lw=1.8, ls="--"),
                    Line2D([], [], color="0.3", marker="*", ls="", ms=9, mec="black", mew=0.5)]
        labels += ["fit (fitted range)", "extrapolation", "prediction + interval"]
        ax.legend(handles, labels, fontsize=7 if compact else 8, loc="lower left", frameon=False)


def plot_fit(rep, ax=None, path: str | Path | None = None, title_extra: str | None = None):
    """Figure of one FitReport; returns the Axes (saved to ``path`` when given, PNG or PDF by suffix)."""
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(7.0, 4.8), constrained_layout=True)
    title = rep.selection.label() + (f"\n{title_extra}" if title_extra else "")
    # ~7.5 characters per inch of axes width at the title's font size
    draw_fit(ax, rep, title=wrap_title(title, max(40, int(7.5 * ax.get_position().width * ax.figure.get_figwidth()))))
    if path is not None:
        ax.figure.savefig(path, dpi=PNG_DPI)
    return ax


def plot_comparison_set(cs, path: str | Path | None = None):
    """Grid of panels: rows = pretrain datasets, columns = benchmarks; returns the Figure."""
    plt = _pyplot()
    rows = list(dict.fromkeys(c.fit.selection.pretrain_dataset for c in cs.comparisons))
    cols = list(dict.fromkeys((c.fit.selection.downstream_dataset, c.fit.selection.metric) for c in cs.comparisons))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(4.3 * len(cols), 3.6 * len(rows)), squeeze=False,
                             constrained_layout=True)
    used = set()
    for c in cs.comparisons:
        sel = c.fit.selection
        r, k = rows.index(sel.pretrain_dataset), cols.index((sel.downstream_dataset, sel.metric))
        used.add((r, k))
        title = wrap_title(f"{sel.pretrain_dataset} · {sel.downstream_dataset}\n{sel.metric}\n{_short_verdict(c)}", 48)
        draw_fit(axes[r][k], c.fit, legend=(r, k) == (0, 0), title=title, compact=True)
    for r in range(len(rows)):
        for k in range(len(cols)):
            if (r, k) not in used:
                axes[r][k].set_visible(False)
    fig.suptitle(wrap_title(cs.consistency, int(11 * 4.3 * len(cols))), fontsize=11)
    if path is not None:
        fig.savefig(path, dpi=PNG_DPI)
    return fig


def _short_verdict(c) -> str:
    """The claim without its evidence list, and whether it is resolved."""
    if c.winner is None:
        return c.verdict.split(":")[0]
    other = c.first if c.winner == c.second else c.second
    if not c.resolved:
        return f"{c.winner} below {other} (not resolved)"
    return f"{c.winner} below {other}" + (f" ({100 * c.agree:.0f}% agree)" if c.agree is not None else "")
