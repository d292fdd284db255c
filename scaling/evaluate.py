"""One fitted group -> a ``GroupFit``: predictions with band, prediction interval and conditioning spread, held-out
and leave-one-out validation, allocation.

Every group is evaluated at [requested computes, held-out computes, plot grid], padded to a fixed length, so one
compiled program serves every group. Intervals are clipped to the range an error can take (an accuracy's error
lies in [0, 1]; a loss is >= 0).
"""

from __future__ import annotations

import numpy as np

import vlscale.scaling.fit as fit_lib
from vlscale.scaling import conditioning as cond_lib
from vlscale.scaling import forms as forms_lib
from vlscale.scaling import frontier as frontier_lib
from vlscale.scaling import metrics as metrics_lib
from vlscale.scaling import uncertainty
from vlscale.scaling.allocation import allocation
from vlscale.scaling.batch import pad_eval
from vlscale.errors import UserError
from vlscale.scaling.fitted import GroupFit
from vlscale.scaling.options import Options
from vlscale.scaling.prepare import Prepared
from vlscale.scaling.results import ResultsError

# Near-optimal solutions are evaluated as one fixed-size block (the optimum repeated as padding).
NEAR_PAD = 1024
NO_INTERVAL = "none"
# A bootstrap interval needs at least this share of resamples that identify the law (more distinct points than
# parameters); below it the group falls back to the delta method with its n - p degrees of freedom.
MIN_IDENTIFIED_SHARE = 0.5


def _pad_rows(thetas: np.ndarray, multiple: int = NEAR_PAD) -> np.ndarray:
    n = len(thetas)
    extra = fit_lib.padded_length(n, multiple) - n
    return np.concatenate([thetas, np.repeat(thetas[:1], extra, axis=0)]) if extra else thetas


def _heldout_mask(prep: Prepared, name: str, x: np.ndarray, y: np.ndarray):
    """Frontier points (of all runs) and best-per-compute points above the fit limit."""
    xmax = prep.fit_max[name]
    if xmax is None:
        return np.zeros(len(x), dtype=bool), np.array([""] * len(x), dtype=object)
    best = frontier_lib.best_per_compute(x, y)
    return (x > xmax) & (prep.frontier[name] | best), np.where(prep.frontier[name], "frontier", "best")


def _delta_pieces(curve, xf, yf, padded):
    """Delta-method pieces on zero-weight-padded fitted points (one compiled program for every group), or the
    reason there are none (as many points as parameters)."""
    pad = fit_lib.padded_length(len(xf)) - len(xf)
    xw = np.concatenate([xf, np.full(pad, xf[0])])
    yw = np.concatenate([yf, np.full(pad, yf[0])])
    ww = np.concatenate([np.ones(len(xf)), np.zeros(pad)])
    try:
        return uncertainty.delta_se(curve, xw, yw, padded, weights=ww), None
    except UserError as e:  # too few points for residual degrees of freedom: no interval (nothing else is caught)
        return None, str(e)


def finish_group(prep: Prepared, name: str, curve, refits: uncertainty.Refits, near: np.ndarray,
                 opts: Options) -> GroupFit:
    g = prep.points[name]
    x, y = g["x"].to_numpy(), g["error"].to_numpy()
    fitted = prep.fitted[name]
    xf, yf = x[fitted], y[fitted]
    form, level = curve.form, opts.level
    metric = metrics_lib.get_metric(prep.selection.metric)
    lo_clip, hi_clip = metric.error_range
    predict = np.asarray(opts.predict, dtype=np.float64)
    held_mask, kind = _heldout_mask(prep, name, x, y)
    held_idx = np.flatnonzero(held_mask)
    eval_x = np.concatenate([predict, x[held_idx], prep.grid])
    n_eval, k, h = len(eval_x), len(predict), len(held_idx)
    padded = pad_eval(eval_x)
    point = np.asarray(curve.predict(padded))[:n_eval]
    grid_boot = grid_se = dof = None
    n_boot = 0 if refits.boot is None else len(refits.boot)
    n_par = forms_lib.get_form(form).n_params
    s_rel, res_dof = uncertainty.residual_scale(curve, xf, yf)
    use_boot = refits.boot is not None
    note = ""
    if use_boot:
        uncertainty.check_failed(refits.boot_failed, n_boot, f"{prep.selection.label()} · {name}",
                                 opts.max_failed_refits, error=ResultsError)
        usable = refits.boot_usable
        if refits.boot_unidentified:
            note = (f"; {refits.boot_unidentified} of {n_boot} resamples had no more distinct points than the "
                    f"{n_par} parameters and were left out")
        if usable < MIN_IDENTIFIED_SHARE * n_boot:
            use_boot = False
            note = (f" (bootstrap undetermined: only {usable} of {n_boot} resamples have more distinct points "
                    f"than the {n_par} parameters)")
    undetermined = uncertainty.undetermined_reason(xf, n_par)
    if undetermined:
        lo = hi = plo = phi = np.full(n_eval, np.nan)
        method = undetermined
    elif use_boot:
        # padded to the near-optimal block's row count: one compiled predict program serves both
        boot = uncertainty.predict_many(form, _pad_rows(refits.boot), padded)[:n_boot, :n_eval]
        lo, hi = uncertainty.percentile_interval(boot, level)
        plo, phi = uncertainty.prediction_interval(point, lo, hi, s_rel, res_dof, level)
        method = f"bootstrap ({refits.boot_usable} of {n_boot} resamples, percentile{note})"
        grid_boot = boot[:, k + h:]
    else:
        d, why = _delta_pieces(curve, xf, yf, padded)
        if d is None:
            lo = hi = plo = phi = np.full(n_eval, np.nan)
            method = f"{NO_INTERVAL} (delta method: {why})"
        else:
            t = uncertainty.t_quantile(level, d.dof)
            se = d.se_fit_space[:n_eval]
            c = d.centre[:n_eval]
            lo, hi = (c * np.exp(-t * se), c * np.exp(t * se)) if d.log_space else (c - t * se, c + t * se)
            plo, phi = uncertainty.prediction_interval(point, lo, hi, d.s_rel, d.dof, level)
            method = "delta method" + note
            grid_se, dof = d.se[k + h:n_eval], d.dof
    lo, hi, plo, phi = (np.clip(a, lo_clip, hi_clip) for a in (lo, hi, plo, phi))
    near_pred = uncertainty.predict_many(form, _pad_rows(near), padded)[:, :n_eval]
    s_lo, s_hi = np.nanmin(near_pred, axis=0), np.nanmax(near_pred, axis=0)

    def entry(i):
        return {"lo": float(lo[i]), "hi": float(hi[i]), "pred_lo": float(plo[i]), "pred_hi": float(phi[i]),
                "spread_lo": float(s_lo[i]), "spread_hi": float(s_hi[i])}

    predictions = [{"compute": float(predict[i]), "error": float(point[i]), **entry(i)} for i in range(k)]
    heldout = []
    for j, i in enumerate(held_idx):
        pred, obs, e = float(point[k + j]), float(y[i]), entry(k + j)
        heldout.append({
            "compute": float(x[i]), "observed": obs, "predicted": pred, "abs_err": abs(pred - obs),
            "abs_err_pp": 100.0 * abs(pred - obs), "rel_err": abs(pred - obs) / obs, **e, "kind": str(kind[i]),
            "model": str(g["model"].iloc[i]), "samples_seen": float(g["samples_seen"].iloc[i]),
            # None where the group has no interval (undetermined): "not inside" would be a claim
            "inside_interval": bool(e["pred_lo"] <= obs <= e["pred_hi"]) if np.isfinite(e["pred_lo"]) else None,
            "inside_band": bool(e["lo"] <= obs <= e["hi"]) if np.isfinite(e["lo"]) else None,
        })
    # Conditioning is judged at the requested computes, else at the held-out points, else at the largest run.
    judged = list(range(k)) if k else list(range(k, k + h)) or [k + h + int(np.argmin(np.abs(prep.grid - x.max())))]
    conditioning = cond_lib.summarize(metric.kind, eval_x[judged], (s_hi - s_lo)[judged], (hi - lo)[judged],
                                      opts.tolerance, int(len(near)))
    return GroupFit(
        name=name, points=g, frontier=prep.frontier[name], fitted=fitted, fit_max_compute=prep.fit_max[name],
        curve=curve, predictions=predictions, heldout=heldout, loo=_loo(form, x, y, g, fitted, refits.loo),
        allocation=allocation(g, fitted, predict), grid=prep.grid, grid_pred=point[k + h:], grid_boot=grid_boot,
        grid_lo=lo[k + h:], grid_hi=hi[k + h:], interval_method=method, grid_se=grid_se, grid_dof=dof,
        grid_spread_lo=s_lo[k + h:], grid_spread_hi=s_hi[k + h:], conditioning=conditioning,
        failed_refits=refits.boot_failed, n_refits=n_boot, metric_kind=metric.kind,
        unidentified_refits=refits.boot_unidentified, undetermined=undetermined, residual_sd=s_rel,
        residual_dof=res_dof, n_params=n_par,
    )


def _loo(form, x, y, g, fitted, thetas_loo) -> list[dict]:
    """Leave-one-out: each fitted point predicted by the fit without it (failed refits are left out)."""
    if thetas_loo is None:
        return []
    fi = np.flatnonzero(fitted)
    pad = fit_lib.padded_length(len(fi)) - len(fi)  # fixed shapes: one compiled program for every group
    xl = np.concatenate([x[fi], np.full(pad, x[fi][-1])])
    tl = np.concatenate([thetas_loo, np.repeat(thetas_loo[-1:], pad, axis=0)])
    preds = uncertainty.predict_many(form, tl, xl)
    out = []
    for j, i in enumerate(fi):
        pred = float(preds[j, j])
        if not np.isfinite(pred):
            continue
        # Leaving out the cheapest point asks the law to extrapolate downwards, which no scaling prediction does
        # (and a law steep at small compute can put the error above 1 there): it is listed, not averaged.
        direction = "below" if j == 0 else "above" if j == len(fi) - 1 else "inside"
        out.append({"compute": float(x[i]), "observed": float(y[i]), "predicted": pred,
                    "abs_err": abs(pred - float(y[i])), "abs_err_pp": 100.0 * abs(pred - float(y[i])),
                    "model": str(g["model"].iloc[i]), "direction": direction})
    return out
