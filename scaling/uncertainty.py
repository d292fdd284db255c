"""How sure is a fitted law? Bootstrap and delta-method intervals, and a simulation that checks their coverage.

* ``bootstrap_fit`` resamples the frontier points with replacement. A resample is the full point set with
  multiplicity weights, so all resamples share one shape and run as one ``jit(vmap(...))``; each starts from the
  full-data optimum (optionally plus its own variable-projection seeds, ``n_seeds``; see BOOTSTRAP_SEEDS).
  Intervals are percentiles of the resampled predictions.
* ``delta_interval`` linearises the prediction around the fit: Var(pred) = g^T (J^T J)^+ g · s^2 with J the
  autodiff Jacobian of the residuals, s^2 = RSS / (n - p), and a Student-t quantile with n - p degrees of freedom.
  (The paper's figure scripts multiply by log(t) instead of t, which for n - p ~ 20 gives a band of about 54 %
  coverage labelled 95 %; ours is the interval its name says.)
* ``coverage_simulation`` draws frontiers from a known law with multiplicative noise, fits, and counts how often
  each nominal interval covers the true value when extrapolating beyond the fitted range.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from vlscale.errors import UserError
import vlscale.scaling.fit as fit_lib  # not `from vlscale.scaling import fit`: the package re-exports api.fit
from vlscale.scaling import forms as forms_lib

DEFAULT_LEVEL = 0.95
DEFAULT_N_BOOT = 1000
# Each resample starts from the full-data optimum plus this many variable-projection seeds of its own. Measured on
# the MaMMUT and CLIP ImageNet frontiers (1000 resamples each): the warm start alone reached the same optimum as
# 16 seeds per resample in every resample (max relative difference 2e-13) at 1/10 of the time, so seeds are opt-in.
BOOTSTRAP_SEEDS = 0
# Relative cut-off for singular values of J^T J in the delta method (a parameter pinned at a bound has a zero
# column; it is treated as fixed instead of blowing up the variance).
DELTA_RCOND = 1e-10

# The simulated law: the MaMMUT ImageNet fit on the paper's data (this module's fit of a·(C+b)^c + d, rounded).
SIM_TRUTH = {"a": 126.0, "b": 2.3e8, "c": -0.256, "d": 0.104}
SIM_X_RANGE = (1e7, 1e11)  # GFLOPs spanned by the simulated frontier
SIM_N_POINTS = 10
SIM_NOISE = 0.015  # multiplicative (log-normal) noise on the error rate
SIM_EXTRAPOLATION = 4.0  # predict at this multiple of the largest fitted compute


@dataclasses.dataclass
class Bootstrap:
    """Resampled fits: natural parameters [n_boot, n_params] and predictions [n_boot, len(predict_at)]."""

    form: str
    param_names: tuple[str, ...]
    params: np.ndarray
    predictions: np.ndarray
    predict_at: np.ndarray
    fit: fit_lib.CurveFit
    level: float = DEFAULT_LEVEL
    thetas: np.ndarray | None = None  # [n_boot, n_params] unconstrained vectors (exact, no floor clipping)

    def interval(self, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval of the predictions at ``predict_at``."""
        q = _tails(self.level if level is None else level)
        lo, hi = np.percentile(self.predictions, q, axis=0)
        return lo, hi

    def param_interval(self, level: float | None = None) -> dict[str, tuple[float, float]]:
        q = _tails(self.level if level is None else level)
        lo, hi = np.percentile(self.params, q, axis=0)
        return {name: (float(a), float(b)) for name, a, b in zip(self.param_names, lo, hi)}


def _tails(level: float) -> tuple[float, float]:
    if not 0.0 < level < 1.0:
        raise UserError(f"confidence level must be in (0, 1); got {level}")
    return 50.0 * (1.0 - level), 50.0 * (1.0 + level)


@functools.partial(jax.jit, static_argnames=("form_name",))
def _predict_many(form_name, thetas, x):
    form = forms_lib.get_form(form_name)
    return jax.vmap(lambda t: form.predict(t, x))(thetas)


def _natural(form, thetas: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(v, dtype=np.float64) for v in form._to_natural(np.asarray(thetas).T)], axis=1)


def resample_weights(n_points: int, n_boot: int, min_distinct: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n_points] multiplicities of a with-replacement resample; draws with too few distinct points
    (fewer than the form has parameters) are redrawn."""
    weights = np.zeros((n_boot, n_points))
    todo = np.arange(n_boot)
    for _ in range(100):
        idx = rng.integers(0, n_points, size=(todo.size, n_points))
        counts = np.stack([np.bincount(row, minlength=n_points) for row in idx]).astype(np.float64)
        weights[todo] = counts
        todo = todo[np.count_nonzero(weights[todo], axis=1) < min_distinct]
        if todo.size == 0:
            return weights
    raise UserError(f"cannot draw resamples with {min_distinct} distinct points from {n_points}; add points")


def bootstrap_fit(
    x,
    y,
    form="saturation_both",
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    predict_at=(),
    loss: str = "mse",
    level: float = DEFAULT_LEVEL,
    huber_delta: float = fit_lib.DEFAULT_HUBER_DELTA,
    full_fit: fit_lib.CurveFit | None = None,
    n_seeds: int = BOOTSTRAP_SEEDS,
) -> Bootstrap:
    """Refits ``form`` on ``n_boot`` with-replacement resamples of (x, y), all at once; deterministic per seed."""
    form = forms_lib.get_form(form)
    _tails(level)
    if int(n_boot) < 1:
        raise UserError(f"n_boot must be >= 1; got {n_boot}")
    x, y, w = fit_lib._check_data(x, y, form)
    predict_at = fit_lib._as_inputs(predict_at, form, "predict_at") if np.size(predict_at) else np.zeros((0,) + x.shape[1:])
    if full_fit is None:
        full_fit = fit_lib.fit_curve(x, y, form, loss=loss, huber_delta=huber_delta)
    rng = np.random.default_rng(seed)
    weights = resample_weights(x.shape[0], int(n_boot), form.n_params, rng)
    best = fit_lib.fit_weighted_sets(
        form,
        np.broadcast_to(x, (int(n_boot),) + x.shape),
        np.broadcast_to(y, (int(n_boot),) + y.shape),
        weights,
        full_fit.theta[None],
        loss=loss,
        huber_delta=huber_delta,
        n_seeds=n_seeds,
    )
    thetas = best["theta"]
    if predict_at.shape[0]:
        with jax.enable_x64(True):
            predictions = np.asarray(_predict_many(form.name, jnp.asarray(thetas), jnp.asarray(predict_at)))
    else:
        predictions = np.zeros((int(n_boot), 0))
    return Bootstrap(
        form=form.name,
        param_names=form.param_names,
        params=_natural(form, thetas),
        predictions=predictions,
        predict_at=predict_at,
        fit=full_fit,
        level=level,
        thetas=thetas,
    )


def delta_interval(fit: fit_lib.CurveFit, x, y, predict_at, level: float = DEFAULT_LEVEL, weights=None):
    """Delta-method (lo, hi) for the prediction at ``predict_at``, with a Student-t quantile.

    Residuals and the interval live in the space the objective used: linear y for ``mse`` on linear forms, log y
    otherwise (the interval is then exponentiated, so it is asymmetric in y). For the Huber loss this is the
    least-squares approximation around the Huber optimum.
    """
    form = forms_lib.get_form(fit.form)
    lo_q, hi_q = _tails(level)
    x, y, w = fit_lib._check_data(x, y, form, weights)
    at = fit_lib._as_inputs(predict_at, form, "predict_at")
    n, p = int(np.count_nonzero(w)), form.n_params
    if n <= p:
        raise UserError(f"the delta method needs more points ({n}) than parameters ({p}); use bootstrap_fit")
    log_space = not (fit.loss == "mse" and form.fit_space == "linear")
    with jax.enable_x64(True):
        jac, resid, grad, centre = (
            np.asarray(a)
            for a in _delta_parts(form.name, log_space, jnp.asarray(fit.theta), jnp.asarray(x), jnp.asarray(y), jnp.asarray(at))
        )
    sw = np.sqrt(w)
    jw, rw = jac * sw[:, None], resid * sw
    s2 = float(np.sum(rw * rw)) / (n - p)
    cov = np.linalg.pinv(jw.T @ jw, rcond=DELTA_RCOND, hermitian=True) * s2
    se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", grad, cov, grad), 0.0))
    t = stats.t.ppf(hi_q / 100.0, n - p)
    lo, hi = centre - t * se, centre + t * se
    if log_space:
        return np.exp(lo), np.exp(hi)
    return lo, hi


@functools.partial(jax.jit, static_argnames=("form_name", "log_space"))
def _delta_parts(form_name, log_space, theta, x, y, at):
    form = forms_lib.get_form(form_name)
    model = form.log_predict if log_space else form.predict
    target = jnp.log(y) if log_space else y
    resid_fn = lambda t: model(t, x) - target  # noqa: E731
    pred_fn = lambda t: model(t, at)  # noqa: E731
    return jax.jacfwd(resid_fn)(theta), resid_fn(theta), jax.jacfwd(pred_fn)(theta), pred_fn(theta)


def coverage_simulation(
    n_rep: int = 200,
    *,
    n_boot: int = 200,
    n_points: int = SIM_N_POINTS,
    noise: float = SIM_NOISE,
    truth: dict | None = None,
    x_range: tuple[float, float] = SIM_X_RANGE,
    extrapolation: float = SIM_EXTRAPOLATION,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    form="saturation_both",
) -> dict:
    """Fraction of simulated frontiers whose nominal ``level`` interval covers the true value at
    ``extrapolation`` x the largest fitted compute, for the bootstrap percentile and the delta-method interval.

    Each repetition: ``n_points`` log-spaced computes over ``x_range``, y = truth · exp(noise · N(0, 1)), one full
    fit (seeds only: variable projection is exhaustive, the grid adds nothing here), ``n_boot`` resamples.
    All repetitions' fits, and all their resamples, run as two batched calls.
    """
    form = forms_lib.get_form(form)
    truth = dict(SIM_TRUTH if truth is None else truth)
    rng = np.random.default_rng(seed)
    x = np.geomspace(x_range[0], x_range[1], n_points)
    at = np.array([x_range[1] * extrapolation])
    theta_true = form.from_params(truth)
    with jax.enable_x64(True):
        y_true = np.asarray(form.predict(jnp.asarray(theta_true), jnp.asarray(x)))
        target = float(np.asarray(form.predict(jnp.asarray(theta_true), jnp.asarray(at)))[0])
    ys = y_true * np.exp(noise * rng.standard_normal((n_rep, n_points)))
    xs = np.broadcast_to(x, ys.shape)
    one_start = theta_true[None]  # any start works: seeds find the optimum; this only fixes the array shape
    full = fit_lib.fit_weighted_sets(form, xs, ys, np.ones_like(ys), one_start, n_seeds=fit_lib.DEFAULT_SEEDS)

    weights = np.concatenate([resample_weights(n_points, n_boot, form.n_params, rng) for _ in range(n_rep)])
    rep = np.repeat(np.arange(n_rep), n_boot)
    boot = fit_lib.fit_weighted_sets(  # each resample warm-starts from its own repetition's full fit
        form, np.broadcast_to(x, weights.shape), ys[rep], weights, full["theta"][rep][:, None], n_seeds=BOOTSTRAP_SEEDS
    )
    with jax.enable_x64(True):
        boot_pred = np.asarray(_predict_many(form.name, jnp.asarray(boot["theta"]), jnp.asarray(at)))[:, 0]
    q = _tails(level)
    boot_lo, boot_hi = np.percentile(boot_pred.reshape(n_rep, n_boot), q, axis=1)

    delta_lo, delta_hi = np.empty(n_rep), np.empty(n_rep)
    for i in range(n_rep):
        f = _as_curve_fit(form, full, i, n_points)
        lo, hi = delta_interval(f, x, ys[i], at, level=level)
        delta_lo[i], delta_hi[i] = lo[0], hi[0]
    boot_cover = (boot_lo <= target) & (target <= boot_hi)
    delta_cover = (delta_lo <= target) & (target <= delta_hi)
    return {
        "n_rep": n_rep,
        "n_boot": n_boot,
        "level": level,
        "target": target,
        "predict_at": float(at[0]),
        "bootstrap_coverage": float(np.mean(boot_cover)),
        "delta_coverage": float(np.mean(delta_cover)),
        "bootstrap_median_width": float(np.median(boot_hi - boot_lo)),
        "delta_median_width": float(np.median(delta_hi - delta_lo)),
    }


def _as_curve_fit(form, best: dict, i: int, n_points: int) -> fit_lib.CurveFit:
    theta = np.asarray(best["theta"][i], dtype=np.float64)
    return fit_lib.CurveFit(
        form=form.name, params=form.to_params(theta), theta=theta, objective=float(best["objective"][i]),
        mse=float(best["mse"][i]), grad_norm=float(best["grad_norm"][i]), n_starts=0,
        converged_starts=int(best["converged"][i]), at_bound=[], n_points=n_points, loss="mse",
    )
