"""Do the intervals mean what they say? A simulation with known laws that counts how often each nominal interval
covers what it claims to when extrapolating beyond the fitted range: the band the true curve, the prediction
interval a new noisy observation, the difference interval the true difference of two laws.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import vlscale.scaling.fit as fit_lib
from vlscale.scaling import forms as forms_lib
from vlscale.scaling import uncertainty as U

# The simulated law: the MaMMUT ImageNet fit on the paper's data (this module's fit of a·(C+b)^c + d, rounded).
SIM_TRUTH = {"a": 126.0, "b": 2.3e8, "c": -0.256, "d": 0.104}
# The second law of the difference check: 2 pp above SIM_TRUTH at 4e11 GFLOPs (a higher floor).
SIM_TRUTH_B = {"a": 100.0, "b": 2.0e8, "c": -0.245, "d": 0.115}
SIM_X_RANGE = (1e7, 1e11)  # GFLOPs spanned by the simulated frontier
SIM_N_POINTS = 10
SIM_NOISE = 0.015  # multiplicative (log-normal) noise on the error rate
SIM_EXTRAPOLATION = 4.0  # predict at this multiple of the largest fitted compute


def coverage_simulation(
    n_rep: int = 200,
    *,
    n_boot: int = 200,
    n_points: int = SIM_N_POINTS,
    noise: float = SIM_NOISE,
    truth: dict | None = None,
    truth_b: dict | None = None,
    x_range: tuple[float, float] = SIM_X_RANGE,
    extrapolation: float = SIM_EXTRAPOLATION,
    level: float = U.DEFAULT_LEVEL,
    seed: int = 0,
    form="saturation_both",
) -> dict:
    """Coverage of nominal ``level`` intervals at ``extrapolation`` x the largest fitted compute.

    Each repetition draws two frontiers (laws ``truth`` and ``truth_b``): ``n_points`` log-spaced computes over
    ``x_range``, y = law · exp(noise · N(0, 1)); fits both (seeds only: variable projection is exhaustive),
    refits ``n_boot`` resamples of each (independent streams) and checks: the band (bootstrap percentile and
    delta method) covers the true law A; the prediction interval covers a new observation of A; the interval of
    the difference B - A (the quartile interval that ``compare`` reports; the plain percentile one beside it, for
    reference) covers the true difference. All fits and all resamples run as two batched calls.
    """
    form = forms_lib.get_form(form)
    laws = [dict(SIM_TRUTH if truth is None else truth), dict(SIM_TRUTH_B if truth_b is None else truth_b)]
    rng = np.random.default_rng(seed)
    x = np.geomspace(x_range[0], x_range[1], n_points)
    at = np.array([x_range[1] * extrapolation])
    y_true, target = [], []
    with jax.enable_x64(True):
        for law in laws:
            theta = jnp.asarray(form.from_params(law))
            y_true.append(np.asarray(form.predict(theta, jnp.asarray(x))))
            target.append(float(np.asarray(form.predict(theta, jnp.asarray(at)))[0]))
    # sets 0..n_rep-1: law A, n_rep..2 n_rep-1: law B
    ys = np.concatenate([yt * np.exp(noise * rng.standard_normal((n_rep, n_points))) for yt in y_true])
    new_obs = target[0] * np.exp(noise * rng.standard_normal(n_rep))
    one_start = form.from_params(laws[0])[None]  # any start works: seeds find the optimum
    full = fit_lib.fit_weighted_sets(form, np.broadcast_to(x, ys.shape), ys, np.ones_like(ys), one_start,
                                     n_seeds=fit_lib.DEFAULT_SEEDS)
    items = [(x, ys[i], full["theta"][i], U.stream(seed, "coverage", i)) for i in range(2 * n_rep)]
    refits = U.refit_many(items, form, n_boot=n_boot)
    boot_pred = U.predict_many(form.name, np.concatenate([r.boot for r in refits]), at)[:, 0].reshape(2 * n_rep, n_boot)
    a_boot, b_boot = boot_pred[:n_rep], boot_pred[n_rep:]
    q = U._tails(level)
    boot_lo, boot_hi = np.nanpercentile(a_boot, q, axis=1)
    point = U.predict_many(form.name, full["theta"], at)[:, 0]
    diff_lo, diff_hi = U.quartile_interval((b_boot - a_boot).T, point[n_rep:] - point[:n_rep], level)
    pct_lo, pct_hi = np.nanpercentile(b_boot - a_boot, q, axis=1)
    pred_cover_boot = np.empty(n_rep, dtype=bool)
    deltas = []
    for i in range(2 * n_rep):
        f = _as_curve_fit(form, full, i, n_points)
        deltas.append(U.delta_se(f, x, ys[i], at))
        if i < n_rep:
            plo, phi = U.prediction_interval(f.predict(at), boot_lo[i], boot_hi[i], deltas[i].s_rel, deltas[i].dof,
                                             level)
            pred_cover_boot[i] = plo[0] <= new_obs[i] <= phi[0]
    t = [U.t_quantile(level, d.dof) for d in deltas]
    delta_cover = np.array([abs(deltas[i].centre[0] - target[0]) <= t[i] * deltas[i].se[0] for i in range(n_rep)])
    pred_cover_delta = np.empty(n_rep, dtype=bool)
    diff_cover_delta = np.empty(n_rep, dtype=bool)
    true_diff = target[1] - target[0]
    for i in range(n_rep):
        d = deltas[i]
        plo, phi = U.prediction_interval(d.centre, d.centre - t[i] * d.se, d.centre + t[i] * d.se, d.s_rel, d.dof,
                                         level)
        pred_cover_delta[i] = plo[0] <= new_obs[i] <= phi[0]
        dlo, dhi = U.delta_difference_interval(deltas[i], deltas[n_rep + i], level)
        diff_cover_delta[i] = dlo[0] <= true_diff <= dhi[0]
    boot_cover = (boot_lo <= target[0]) & (target[0] <= boot_hi)
    return {
        "n_rep": n_rep,
        "n_boot": n_boot,
        "level": level,
        "target": target[0],
        "true_difference": true_diff,
        "predict_at": float(at[0]),
        "bootstrap_coverage": float(np.mean(boot_cover)),
        "delta_coverage": float(np.mean(delta_cover)),
        "bootstrap_prediction_coverage": float(np.mean(pred_cover_boot)),
        "delta_prediction_coverage": float(np.mean(pred_cover_delta)),
        "bootstrap_difference_coverage": float(np.mean((diff_lo <= true_diff) & (true_diff <= diff_hi))),
        "bootstrap_percentile_difference_coverage": float(np.mean((pct_lo <= true_diff) & (true_diff <= pct_hi))),
        "delta_difference_coverage": float(np.mean(diff_cover_delta)),
        "bootstrap_median_width": float(np.median(boot_hi - boot_lo)),
        "delta_median_width": float(np.median([2 * t[i] * deltas[i].se[0] for i in range(n_rep)])),
    }


def _as_curve_fit(form, best: dict, i: int, n_points: int) -> fit_lib.CurveFit:
    theta = np.asarray(best["theta"][i], dtype=np.float64)
    return fit_lib.CurveFit(
        form=form.name, params=form.to_params(theta), theta=theta, objective=float(best["objective"][i]),
        mse=float(best["mse"][i]), grad_norm=float(best["grad_norm"][i]), n_starts=0,
        converged_starts=int(best["converged"][i]), at_bound=[], n_points=n_points, loss="mse",
    )
