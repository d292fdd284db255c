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


def new_figure(figsize, *, offscreen: bool = False, **subplots_kw):
    """``(figure, axes)`` like ``plt.subplots``. ``offscreen`` figures are for saving only: pyplot never sees them
    (importing it costs a fifth of a second of every saved report, and nothing has to close them)."""
    if not offscreen:
        return _pyplot().subplots(figsize=figsize, **subplots_kw)
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=subplots_kw.pop("layout", None))
    return fig, fig.subplots(**subplots_kw)


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


_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def _power_of_ten(v: float, _pos=None) -> str:
    """``10¹¹`` in plain Unicode for a power of ten, else the value in ``%g`` form."""
    if v <= 0:
        return ""
    e = np.log10(v)
    if abs(e - round(e)) < 1e-9:
        return "10" + str(int(round(e))).translate(_SUPERSCRIPT)
    return f"{v:g}"


def panel_data(rep) -> dict:
    """What ``draw_panel`` needs from one FitReport, as plain numbers, strings and arrays (JSON-able, no pandas or
    JAX: ``render_worker`` draws it in another process)."""
    groups = []
    for name, g in rep.groups.items():
        groups.append(dict(
            name=name, x=g.points["x"].to_numpy(dtype=float), y=g.points["error"].to_numpy(dtype=float),
            fitted=np.asarray(g.fitted, dtype=bool), frontier=np.asarray(g.frontier, dtype=bool),
            heldout=[(float(h["compute"]), float(h["observed"])) for h in g.heldout],
            grid=np.asarray(g.grid, dtype=float), pred=np.asarray(g.grid_pred, dtype=float),
            lo=np.asarray(g.grid_lo, dtype=float), hi=np.asarray(g.grid_hi, dtype=float),
            predictions=[(float(p["compute"]), float(p["error"]), float(p["lo"]), float(p["hi"]))
                         for p in g.predictions],
            fit_max_compute=g.fit_max_compute))
    return dict(groups=groups, x_name=rep.selection.x, ylabel=_ylabel(rep))


def draw_fit(ax, rep, *, legend: bool = True, title: str | None = None, compact: bool = False) -> None:
    """Draws one FitReport onto ``ax``."""
    draw_panel(ax, panel_data(rep), legend=legend, title=title, compact=compact)


def draw_panel(ax, panel: dict, *, legend: bool = True, title: str | None = None, compact: bool = False) -> None:
    """Draws one ``panel_data`` onto ``ax``."""
    for i, g in enumerate(panel["groups"]):
        col = _colour(g["name"], i)
        x, y, fm = g["x"], g["y"], g["fitted"]
        ax.scatter(x, y, s=8 if compact else 12, color=col, alpha=0.18, linewidths=0, zorder=1)
        ax.scatter(x[fm], y[fm], s=18 if compact else 26, color=col, edgecolors="white", linewidths=0.5, zorder=4,
                   label=f"{g['name']} frontier ({int(fm.sum())} fitted)")
        if g["heldout"]:
            hx, hy = zip(*g["heldout"])
            ax.scatter(hx, hy, s=50 if compact else 70, facecolors="none", edgecolors=col, linewidths=1.6,
                       marker="D", zorder=5, label=f"{g['name']} held out")
        grid = g["grid"]
        lo_fit, hi_fit = x[fm].min(), x[fm].max()
        inside = (grid >= lo_fit) & (grid <= hi_fit)
        beyond = grid >= hi_fit
        ax.plot(grid[inside], g["pred"][inside], color=col, lw=1.8, zorder=3)
        ax.plot(grid[beyond], g["pred"][beyond], color=col, lw=1.8, ls="--", zorder=3)
        if np.isfinite(g["lo"]).any():
            ax.fill_between(grid, g["lo"], g["hi"], color=col, alpha=0.15, linewidths=0, zorder=2)
        for compute, err, lo, hi in g["predictions"]:
            ax.errorbar([compute], [err], yerr=[[max(err - lo, 0)], [max(hi - err, 0)]] if np.isfinite(lo) else None,
                        fmt="*", ms=9 if compact else 11, color=col, mec="black", mew=0.5, capsize=2, zorder=6)
    for lim in {g["fit_max_compute"] for g in panel["groups"] if g["fit_max_compute"] is not None}:
        ax.axvline(lim, color="0.4", ls=":", lw=1, zorder=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ys = np.concatenate([g["y"] for g in panel["groups"]])
    fr = np.concatenate([g["y"][g["frontier"]] for g in panel["groups"]])
    preds = np.concatenate([g["pred"] for g in panel["groups"]])
    ymin = max(min(fr.min(), np.nanmin(preds)) * 0.85, 1e-4)
    ax.set_ylim(ymin, min(ys.max() * 1.08, 1.05))
    ax.set_xlabel("Compute C [GFLOPs]" if compact else f"Compute C [GFLOPs] ({panel['x_name']})",
                  fontsize=9 if compact else 10)
    ax.set_ylabel("error" if compact else panel["ylabel"], fontsize=9 if compact else 10)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    # Plain-text tick labels: matplotlib's default log labels are mathtext ($10^{11}$), and building the mathtext
    # parser is a fifth of a second of every saved figure.
    ax.xaxis.set_major_formatter(FuncFormatter(_power_of_ten))
    ax.xaxis.set_minor_formatter(NullFormatter())
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


# Figure data: ``fit_figure`` / ``comparison_set_figure`` describe a whole figure in plain data; ``render`` draws
# one. The CLI hands them to a renderer process started before the fit (``render_worker``); notebooks draw them
# here. Both paths run this code, so the files are the same.
FIT_FIGSIZE = (7.0, 4.8)


def fit_margins(title: str, figsize=FIT_FIGSIZE) -> dict[str, float]:
    """Fixed margins of the one-panel figure, in inches turned into figure fractions: room for 6-character tick
    labels and the axis label on the left, the x labels below, and every line of the title on top. (A layout
    engine finds the same within a few points, at a third of the figure's drawing time.)"""
    width, height = figsize
    title_lines = title.count("\n") + 1
    return dict(left=0.85 / width, right=1 - 0.25 / width, bottom=0.62 / height,
                top=1 - (0.12 + 0.18 * title_lines) / height)


def fit_figure(rep, title_extra: str | None = None) -> dict:
    """A figure of one FitReport (``title_extra``: a second title line, e.g. the verdict)."""
    title = rep.selection.label() + (f"\n{title_extra}" if title_extra else "")
    # ~10 characters per inch of the axes' width at the title's font size
    return dict(kind="fit", panel=panel_data(rep), title=wrap_title(title, int(10 * 0.85 * FIT_FIGSIZE[0])))


def comparison_set_figure(cs) -> dict:
    """A grid of panels: rows = pretrain datasets, columns = benchmarks."""
    rows = list(dict.fromkeys(c.fit.selection.pretrain_dataset for c in cs.comparisons))
    cols = list(dict.fromkeys((c.fit.selection.downstream_dataset, c.fit.selection.metric) for c in cs.comparisons))
    panels = []
    for c in cs.comparisons:
        sel = c.fit.selection
        r, k = rows.index(sel.pretrain_dataset), cols.index((sel.downstream_dataset, sel.metric))
        title = wrap_title(f"{sel.pretrain_dataset} · {sel.downstream_dataset}\n{sel.metric}\n{_short_verdict(c)}", 48)
        panels.append((r, k, panel_data(c.fit), title))
    return dict(kind="set", shape=(len(rows), len(cols)), panels=panels,
                suptitle=wrap_title(cs.consistency, int(11 * 4.3 * len(cols))))


def render(figure: dict, *, ax=None, offscreen: bool = False):
    """Draws a ``fit_figure`` (returns its Axes; onto ``ax`` when given) or a ``comparison_set_figure`` (returns
    the Figure). ``offscreen``: a figure pyplot does not manage (``new_figure``), when it is only saved."""
    if figure["kind"] == "fit":
        if ax is None:
            fig, ax = new_figure(FIT_FIGSIZE, offscreen=offscreen)
            fig.subplots_adjust(**fit_margins(figure["title"]))
        draw_panel(ax, figure["panel"], title=figure["title"])
        return ax
    n_rows, n_cols = figure["shape"]
    fig, axes = new_figure((4.3 * n_cols, 3.6 * n_rows), offscreen=offscreen, nrows=n_rows, ncols=n_cols,
                           squeeze=False, layout="constrained")
    used = set()
    for r, k, panel, title in figure["panels"]:
        used.add((r, k))
        draw_panel(axes[r][k], panel, legend=(r, k) == (0, 0), title=title, compact=True)
    for r in range(n_rows):
        for k in range(n_cols):
            if (r, k) not in used:
                axes[r][k].set_visible(False)
    fig.suptitle(figure["suptitle"], fontsize=11)
    return fig


def save_figure(figure: dict, out_dir, stem: str = "fit") -> dict[str, Path]:
    """Draws ``figure`` offscreen and writes ``stem``.png then ``stem``.pdf into ``out_dir``."""
    drawn = render(figure, offscreen=True)
    return save(drawn.figure if figure["kind"] == "fit" else drawn, out_dir, stem)


def save(fig, out_dir, stem: str = "fit") -> dict[str, Path]:
    """``stem``.png then ``stem``.pdf; the PDF reuses the PNG's layout (one constrained-layout pass fewer)."""
    paths = {}
    for ext in ("png", "pdf"):
        paths[ext] = Path(out_dir) / f"{stem}.{ext}"
        fig.savefig(paths[ext], dpi=PNG_DPI if ext == "png" else None)
        fig.set_layout_engine("none")
    return paths


def plot_fit(rep, ax=None, path: str | Path | None = None, title_extra: str | None = None, *,
             offscreen: bool = False):
    """Figure of one FitReport; returns the Axes (saved to ``path`` when given, PNG or PDF by suffix)."""
    ax = render(fit_figure(rep, title_extra), ax=ax, offscreen=offscreen)
    if path is not None:
        ax.figure.savefig(path, dpi=PNG_DPI)
    return ax


def plot_comparison_set(cs, path: str | Path | None = None, *, offscreen: bool = False):
    """Grid of panels: rows = pretrain datasets, columns = benchmarks; returns the Figure."""
    fig = render(comparison_set_figure(cs), offscreen=offscreen)
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
