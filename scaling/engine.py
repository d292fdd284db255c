"""Fits every group of every prepared selection: one batched main fit, one batched conditioning scan, one batched
bootstrap + leave-one-out refit, then per-group evaluation.

Every set is fitted as it would be alone: its own seed grid (``projection.set_grids``) and its own random
stream (``uncertainty.stream`` of the seed and the set's selection and group), so batching never changes a result.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from vlscale.scaling import batch, conditioning, uncertainty
from vlscale.scaling.evaluate import finish_group
from vlscale.scaling.fitted import GroupFit
from vlscale.scaling.options import Options
from vlscale.scaling.prepare import Prepared
from vlscale.scaling.report import fmt_c, fmt_diff
from vlscale.scaling.results import Selection


def _log(progress: Callable[[str], None] | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def stream_for(seed: int, sel: Selection, group: str) -> np.random.SeedSequence:
    """The bootstrap stream of one group of one selection (independent of every other group and selection)."""
    return uncertainty.stream(seed, sel.downstream_dataset, sel.metric, sel.pretrain_dataset, sel.lr_scheduler, group)


def _fitted_text(p: Prepared, name: str, gf: GroupFit) -> str:
    """How many points were fitted, and from which frontier (with --frontier-scope fit the fitted frontier is
    built from the runs <= --fit-max-compute alone, so its size is not a share of the all-runs frontier)."""
    n_fit, xmax = int(p.fitted[name].sum()), p.fit_max[name]
    if xmax is not None and p.frontier_scope == "fit":
        return (f"{n_fit} frontier points fitted (the frontier of the runs <= {fmt_c(xmax)} GFLOPs; "
                f"all runs' frontier has {gf.n_frontier})")
    return f"{n_fit}/{gf.n_frontier} frontier points fitted"


def fit_prepared(preps: Sequence[Prepared], opts: Options, *, form: str | None = None
                 ) -> tuple[list[dict[str, GroupFit]], float, float]:
    """GroupFits per prepared selection, the wall time and the JAX compilation time."""
    form = form or opts.form
    progress = opts.progress
    t0 = time.perf_counter()
    keys = [(i, name) for i, p in enumerate(preps) for name in p.names]
    with batch.CompileTimer() as timer:
        sets = []
        for i, name in keys:
            xf, yf = preps[i].fitted_xy(name)
            sets.append((xf, yf, np.ones_like(xf)))
        _log(progress, f"fitting {form} to {len(sets)} frontier(s) ({sum(len(s[0]) for s in sets)} points; "
                       f"starts: {opts.starts}) ...")
        curves = batch.fit_sets(sets, form, loss=opts.loss, starts=batch.start_grid(form, opts.starts))
        xs, ys, ws = batch.pad_sets(sets)
        near = conditioning.near_optimal(form, xs, ys, ws, curves, loss=opts.loss, tolerance=opts.tolerance)
        streams = [stream_for(opts.seed, preps[i].selection, name) for i, name in keys]
        if opts.bootstrap > 0 or opts.leave_one_out:
            _log(progress, f"refitting {opts.bootstrap} bootstrap resamples"
                           + (" and leave-one-out" if opts.leave_one_out else "") + " of each frontier in one batch ...")
        items = [(xf, yf, c.theta, ss) for (xf, yf, _), c, ss in zip(sets, curves, streams)]
        refits = uncertainty.refit_many(items, form, n_boot=opts.bootstrap, loss=opts.loss,
                                        leave_one_out=opts.leave_one_out)
        out: list[dict[str, GroupFit]] = [dict() for _ in preps]
        for (i, name), curve, r, nr in zip(keys, curves, refits, near):
            p = preps[i]
            gf = finish_group(p, name, curve, r, nr, opts)
            out[i][name] = gf
            loo = gf.loo_summary()
            _log(progress, f"  {p.selection.label()} · {name}: {_fitted_text(p, name, gf)}"
                           + (f", leave-one-out {fmt_diff(loo['mean_abs_err'], gf.metric_kind)} mean" if loo else ""))
    return out, time.perf_counter() - t0, timer.seconds
