"""How sure is a fitted law? Bootstrap and delta-method intervals, prediction intervals, and a simulation that
checks their coverage.

* ``refit_many`` is the one bootstrap (and leave-one-out) implementation: it resamples the fitted points of many
  point sets with replacement (a resample is the full set with multiplicity weights), each set from its own
  random stream (``stream``: seed + a stable name, so a set's resamples never depend on which other sets are
  fitted with it), and refits every resample of every set in ONE ``jit(vmap(...))`` call, each from its set's
  full-data optimum. Refits ending with a non-finite objective are counted and dropped (NaN), never silently
  averaged. ``bootstrap_fit`` is the one-set front end.
* ``delta_se`` / ``delta_interval`` linearise the prediction around the fit, with J the autodiff Jacobian of the
  residuals and a Student-t quantile with n - p degrees of freedom. Log-space fits: Var(pred) = g^T (J^T J)^+ g
  · s^2, s^2 = RSS / (n - p). Linear-y fits: the sandwich (J^T J)^+ J^T diag(s_rel^2 yhat^2) J (J^T J)^+, since
  error rates scatter in proportion to their size (s_rel^2: mean squared relative residual over n - p). (The paper's figure scripts multiply by log(t) instead of t, which for n - p ~ 20 gives a band of
  about 54 % coverage labelled 95 %; ours is the interval its name says.)
* ``prediction_interval`` (where a new observation will fall, not where the mean curve is): the curve's band
  plus the fitted points' scatter, taken as multiplicative (error rates scatter in proportion to their size),
  added in quadrature; it holds a single noisy held-out point to the right standard.
* ``coverage.coverage_simulation`` checks by simulation that each interval covers what it claims to.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import stdtrit  # Student-t quantile; scipy.stats would add seconds of import time

from vlscale.errors import UserError
import vlscale.scaling.fit as fit_lib  # not `from vlscale.scaling import fit`: the package re-exports api.fit
from vlscale.scaling import forms as forms_lib
from vlscale.scaling.options import DEFAULT_LEVEL

DEFAULT_N_BOOT = 1000
# Each resample starts from the full-data optimum plus this many variable-projection seeds of its own. On the
# MaMMUT and CLIP ImageNet frontiers the warm start alone reached the same optimum as 16 seeds per resample in
# every resample (max relative difference 2e-13), so seeds are opt-in.
BOOTSTRAP_SEEDS = 0
# Relative cut-off for singular values of J^T J in the delta method (a parameter pinned at a bound has a zero
# column; it is treated as fixed instead of blowing up the variance).
DELTA_RCOND = 1e-10

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
    failed: int = 0  # refits that ended with a non-finite objective (NaN rows)
    unidentified: int = 0  # resamples with no more distinct points than parameters (NaN rows, see ``identifies``)

    def interval(self, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval of the predictions at ``predict_at``."""
        return percentile_interval(self.predictions, self.level if level is None else level)

    def param_interval(self, level: float | None = None) -> dict[str, tuple[float, float]]:
        q = _tails(self.level if level is None else level)
        lo, hi = np.nanpercentile(self.params, q, axis=0)
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


def undetermined(n_points: int, n_params: int) -> str:
    """The one wording for a law that its points cannot test: no residual degrees of freedom, so no interval."""
    return (f"undetermined: {n_points} points for {n_params} parameters (an interval needs at least "
            f"{n_params + 1}: the law interpolates its points and the data say nothing about its uncertainty)")


def resample_weights(n_points: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n_points] multiplicities of plain with-replacement resamples (never redrawn: redrawing the
    resamples that cannot identify the law would condition the bootstrap on the lucky ones)."""
    idx = rng.integers(0, n_points, size=(int(n_boot), n_points))
    return np.stack([np.bincount(row, minlength=n_points) for row in idx]).astype(np.float64).reshape(int(n_boot), n_points)


def identifies(weights: np.ndarray, n_params: int, x=None) -> np.ndarray:
    """Per resample: can it measure the law's spread? It needs more distinct points than the law has parameters
    (with exactly as many the law interpolates them: zero residuals) and, where ``x`` is given, at least as many
    distinct inputs as parameters (points tied in compute pin the curve at one compute only)."""
    w = np.asarray(weights) > 0
    ok = np.count_nonzero(w, axis=1) > n_params
    if x is not None:
        _, inv = np.unique(np.asarray(x).reshape(len(w[0]), -1), axis=0, return_inverse=True)
        onehot = np.zeros((w.shape[1], int(inv.max()) + 1))
        onehot[np.arange(w.shape[1]), inv.reshape(-1)] = 1.0
        ok &= np.count_nonzero(w.astype(np.float64) @ onehot, axis=1) >= n_params
    return ok


def undetermined_reason(x, n_params: int, weights=None) -> str | None:
    """Why points (with nonzero weight) cannot give a law an interval, or None when they can: no more points
    than parameters (no residual degrees of freedom), or fewer distinct inputs than parameters."""
    x = np.asarray(x)
    used = np.ones(len(x), dtype=bool) if weights is None else np.asarray(weights) > 0
    n = int(used.sum())
    if n <= n_params:
        return undetermined(n, n_params)
    k = len(np.unique(x[used].reshape(n, -1), axis=0))
    if k < n_params:
        return (f"undetermined: {n} points at only {k} distinct compute values for {n_params} parameters "
                "(ties in compute do not identify the law)")
    return None


def stream(seed, *names) -> np.random.SeedSequence:
    """An independent random stream for one point set: the user's seed plus a stable hash of its name(s)."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    key = "|".join(str(n) for n in names)
    return np.random.SeedSequence(int(seed), spawn_key=(zlib.crc32(key.encode()),))


def generator(ss, k: int = 0) -> np.random.Generator:
    """The k-th derived generator of a stream (0: resample weights, 1: residual draws); ``ss`` may be an int seed."""
    ss = stream(ss)
    return np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=tuple(ss.spawn_key) + (k,)))


@dataclasses.dataclass
class Refits:
    """One set's refits: thetas [n, p] with NaN rows where the refit ended non-finite, and how many did."""

    boot: np.ndarray | None
    loo: np.ndarray | None
    boot_failed: int = 0
    loo_failed: int = 0
    boot_unidentified: int = 0  # resamples with no more distinct points than parameters (NaN rows, not refits)

    @property
    def boot_usable(self) -> int:
        return 0 if self.boot is None else int(np.sum(np.all(np.isfinite(self.boot), axis=1)))


def refit_many(items, form, *, n_boot: int, loss: str = "mse", leave_one_out: bool = False,
               huber_delta: float = fit_lib.DEFAULT_HUBER_DELTA, n_seeds: int = BOOTSTRAP_SEEDS) -> list[Refits]:
    """Bootstrap (and leave-one-out) refits of many point sets in ONE batched call.

    ``items``: (x, y, full-data theta, stream) per set. Each set's resamples come from its own ``stream`` and
    start from its own full-data optimum. Sets are padded with zero-weight points to one length. A set with no
    more points than parameters gets no refits (``undetermined``); a resample with no more distinct points than
    parameters is a NaN row counted in ``boot_unidentified`` (``identifies``).
    """
    form = forms_lib.get_form(form)
    length = fit_lib.padded_length(max(len(x) for x, _, _, _ in items))
    xs, ys, ws, starts, spans, unknown = [], [], [], [], [], []
    for x, y, theta, ss in items:
        n = len(x)
        blocks = []
        do_boot = n_boot > 0 and undetermined_reason(x, form.n_params) is None
        if do_boot:
            wb = resample_weights(n, n_boot, generator(ss, 0))
            unknown.append(~identifies(wb, form.n_params, x))
            blocks.append(wb)
        else:
            unknown.append(np.zeros(0, dtype=bool))
        do_loo = leave_one_out and n > form.n_params
        if do_loo:
            blocks.append(1.0 - np.eye(n))
        w = np.concatenate(blocks) if blocks else np.zeros((0, n))
        spans.append((len(w), n_boot if do_boot else 0, n if do_loo else 0))
        if not len(w):
            continue
        wp = np.zeros((len(w), length))
        wp[:, :n] = w
        xp = np.concatenate([x, np.full(length - n, x[0])])
        yp = np.concatenate([y, np.full(length - n, y[0])])
        xs.append(np.broadcast_to(xp, wp.shape))
        ys.append(np.broadcast_to(yp, wp.shape))
        ws.append(wp)
        starts.append(np.broadcast_to(np.asarray(theta)[None, None], (len(w), 1, form.n_params)))
    if not ws:
        return [Refits(None, None) for _ in items]
    best = fit_lib.fit_weighted_sets(form, np.concatenate(xs), np.concatenate(ys), np.concatenate(ws),
                                     np.concatenate(starts), loss=loss, huber_delta=huber_delta, n_seeds=n_seeds)
    ok = np.isfinite(best["objective"]) & np.all(np.isfinite(best["theta"]), axis=1)
    thetas = np.where(ok[:, None], best["theta"], np.nan)
    out, at = [], 0
    for (total, nb, nl), bad in zip(spans, unknown):
        t, good = thetas[at:at + total].copy(), ok[at:at + total]
        if nb:
            t[:nb][bad] = np.nan  # an interpolating or unidentified refit says nothing about the spread
        out.append(Refits(t[:nb] if nb else None, t[nb:nb + nl] if nl else None,
                          int(np.sum(~good[:nb] & ~bad)), int(np.sum(~good[nb:nb + nl])), int(np.sum(bad))))
        at += total
    return out


def check_failed(failed: int, total: int, what: str, max_share: float, error=UserError) -> None:
    """Raises when more than ``max_share`` of ``total`` refits failed (a narrower band would be a lie)."""
    if total and failed > max_share * total:
        raise error(f"{failed} of {total} bootstrap refits of {what} ended with a non-finite objective "
                        f"(more than {100 * max_share:.0f}%); the law does not fit these points: check the "
                        "selection or choose another --form")


def bootstrap_fit(
    x,
    y,
    form="saturation_both",
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed=0,
    predict_at=(),
    loss: str = "mse",
    level: float = DEFAULT_LEVEL,
    huber_delta: float = fit_lib.DEFAULT_HUBER_DELTA,
    full_fit: fit_lib.CurveFit | None = None,
    n_seeds: int = BOOTSTRAP_SEEDS,
) -> Bootstrap:
    """Refits ``form`` on ``n_boot`` with-replacement resamples of (x, y), all at once; deterministic per seed
    (an int, or a stream from ``stream``). Failed refits are NaN rows (see ``Bootstrap.failed``)."""
    form = forms_lib.get_form(form)
    _tails(level)
    if int(n_boot) < 1:
        raise UserError(f"n_boot must be >= 1; got {n_boot}")
    x, y, w = fit_lib._check_data(x, y, form)
    why = undetermined_reason(x, form.n_params)
    if why:
        raise UserError(why)
    predict_at = fit_lib._as_inputs(predict_at, form, "predict_at") if np.size(predict_at) else np.zeros((0,) + x.shape[1:])
    if full_fit is None:
        full_fit = fit_lib.fit_curve(x, y, form, loss=loss, huber_delta=huber_delta)
    (refits,) = refit_many([(x, y, full_fit.theta, stream(seed))], form, n_boot=int(n_boot), loss=loss,
                           huber_delta=huber_delta, n_seeds=n_seeds)
    thetas = refits.boot
    if predict_at.shape[0]:
        predictions = predict_many(form.name, thetas, predict_at)
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
        failed=refits.boot_failed,
        unidentified=refits.boot_unidentified,
    )


def predict_many(form_name: str, thetas: np.ndarray, x: np.ndarray) -> np.ndarray:
    """[n_theta, len(x)] predictions (NaN rows stay NaN)."""
    with jax.enable_x64(True):
        return np.asarray(_predict_many(form_name, np.asarray(thetas, dtype=np.float64),
                                        np.asarray(x, dtype=np.float64)))


def percentile_interval(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, ignoring NaN rows (failed refits)."""
    lo_q, hi_q = _tails(level)
    return np.nanpercentile(samples, lo_q, axis=0), np.nanpercentile(samples, hi_q, axis=0)


def quartile_interval(samples: np.ndarray, centre: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Interval about ``centre`` whose two half-widths come from the lower and upper quartile distances of the
    samples (axis 0, NaN rows ignored), scaled by z_(1+level)/2 / z_0.75 as for a normal distribution.

    Used for the bootstrap interval of a difference b - a of two independently fitted laws. Its resamples are
    heavy-tailed on both sides (a resample that drops the largest-compute points of either frontier extrapolates
    wildly), and percentile tails of the difference then over-cover (99-100 % for a nominal 95 % in
    ``coverage.coverage_simulation``); the quartiles measure the core spread and keep its skew (94.5-96.5 %).
    """
    lo_q, hi_q = _tails(level)
    scale = NormalDist().inv_cdf(hi_q / 100.0) / NormalDist().inv_cdf(0.75)
    q25, q50, q75 = np.nanpercentile(samples, [25.0, 50.0, 75.0], axis=0)
    return centre - scale * (q50 - q25), centre + scale * (q75 - q50)


def residual_scale(fit: fit_lib.CurveFit, x, y, weights=None) -> tuple[float, int]:
    """The fitted points' multiplicative scatter: sd of log(y / prediction) with n - p degrees of freedom.
    With no degrees of freedom (n <= p) the scatter is unknown: (NaN, n - p), never a made-up 1."""
    w = np.ones(len(y)) if weights is None else np.asarray(weights)
    used = w > 0
    dof = int(used.sum()) - forms_lib.get_form(fit.form).n_params
    if dof < 1:
        return float("nan"), dof
    r = np.log(np.asarray(y)[used] / np.asarray(fit.predict(np.asarray(x)[used])))
    return float(np.sqrt(np.sum(r * r) / dof)), dof


def prediction_interval(point, lo, hi, s_rel: float, dof: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Where a new observation falls: the curve's band (lo, hi around point) and the scatter of a new point,
    point·exp(±t·s_rel), added in quadrature on each side (independent errors). Always contains the band.
    Without residual degrees of freedom (dof < 1) the scatter is unknown and so is the interval (NaN)."""
    if dof < 1 or not np.isfinite(s_rel):
        nan = np.full(np.shape(point), np.nan)
        return nan, nan.copy()
    t = t_quantile(level, dof)
    point, lo, hi = (np.asarray(a, dtype=np.float64) for a in (point, lo, hi))
    down = point * (1.0 - np.exp(-t * s_rel))
    up = point * (np.exp(t * s_rel) - 1.0)
    return point - np.hypot(point - lo, down), point + np.hypot(hi - point, up)


@dataclasses.dataclass
class Delta:
    """Delta-method pieces at some inputs: the prediction, its standard error in linear y and in the space the
    objective used (log y for log-space fits), the residual scale and the degrees of freedom n - p."""

    centre: np.ndarray
    se: np.ndarray
    se_fit_space: np.ndarray
    log_space: bool
    dof: int
    s_rel: float  # sd of log residuals (multiplicative scatter), with n - p degrees of freedom


def delta_se(fit: fit_lib.CurveFit, x, y, predict_at, weights=None) -> Delta:
    """The delta method's standard errors at ``predict_at`` (see module doc). Raises UserError when there are
    no more points than parameters (no residual degrees of freedom)."""
    form = forms_lib.get_form(fit.form)
    x, y, w = fit_lib._check_data(x, y, form, weights)
    at = fit_lib._as_inputs(predict_at, form, "predict_at")
    n, p = int(np.count_nonzero(w)), form.n_params
    why = undetermined_reason(x, p, w)
    if why:
        raise UserError(why)
    log_space = not (fit.loss == "mse" and form.fit_space == "linear")
    with jax.enable_x64(True):
        jac, resid, grad, centre = (
            np.asarray(a)
            for a in _delta_parts(form.name, log_space, np.asarray(fit.theta), np.asarray(x), np.asarray(y), np.asarray(at))
        )
    sw = np.sqrt(w)
    jw, rw = jac * sw[:, None], resid * sw
    bread = np.linalg.pinv(jw.T @ jw, rcond=DELTA_RCOND, hermitian=True)
    if log_space:  # multiplicative scatter is constant in log y
        cov = bread * (float(np.sum(rw * rw)) / (n - p))
    else:
        # Least squares on linear y, but error rates scatter in proportion to their size: a constant s^2 is
        # dominated by the high-error (small-compute) points and overstated an extrapolation's spread by ~1.6x
        # (coverage.coverage_simulation: 100 % for the difference of two laws). The sandwich with
        # Var(y_i) = s_rel^2 * yhat_i^2 is the delta method under that scatter.
        yhat = np.asarray(y, dtype=np.float64) + resid
        s2_rel = float(np.sum(w * (resid / yhat) ** 2)) / (n - p)
        meat = (jw * (w * s2_rel * yhat ** 2)[:, None]).T @ jw
        cov = bread @ meat @ bread
    se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", grad, cov, grad), 0.0))
    pred = np.exp(centre) if log_space else centre
    s_rel, _ = residual_scale(fit, x, y, w)
    return Delta(pred, pred * se if log_space else se, se, log_space, n - p, s_rel)


def t_quantile(level: float, dof: int) -> float:
    return float(stdtrit(dof, _tails(level)[1] / 100.0))


def delta_interval(fit: fit_lib.CurveFit, x, y, predict_at, level: float = DEFAULT_LEVEL, weights=None):
    """Delta-method (lo, hi) for the prediction at ``predict_at``, with a Student-t quantile.

    Residuals and the interval live in the space the objective used: linear y for ``mse`` on linear forms, log y
    otherwise (the interval is then exponentiated, so it is asymmetric in y). For the Huber loss this is the
    least-squares approximation around the Huber optimum.
    """
    _tails(level)
    d = delta_se(fit, x, y, predict_at, weights)
    t = t_quantile(level, d.dof)
    if d.log_space:
        return d.centre * np.exp(-t * d.se_fit_space), d.centre * np.exp(t * d.se_fit_space)
    return d.centre - t * d.se, d.centre + t * d.se


def difference_half_width(se_a, dof_a: int, se_b, dof_b: int, level: float) -> np.ndarray:
    """Delta-method half-width of b - a for two independently fitted curves: the variances add, and the Student-t
    quantile takes the Welch-Satterthwaite degrees of freedom of that sum (between min(dof) and dof_a + dof_b)."""
    va, vb = np.asarray(se_a, dtype=np.float64) ** 2, np.asarray(se_b, dtype=np.float64) ** 2
    total = va + vb
    with np.errstate(invalid="ignore", divide="ignore"):
        dof = total ** 2 / (va ** 2 / dof_a + vb ** 2 / dof_b)
    dof = np.where(np.isfinite(dof), np.clip(dof, min(dof_a, dof_b), dof_a + dof_b), min(dof_a, dof_b))
    q = _tails(level)[1] / 100.0
    return stdtrit(dof, q) * np.sqrt(total)


def delta_difference_interval(a: Delta, b: Delta, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Interval of b - a for two independently fitted curves (``difference_half_width``)."""
    half = difference_half_width(a.se, a.dof, b.se, b.dof, level)
    diff = b.centre - a.centre
    return diff - half, diff + half


@functools.partial(jax.jit, static_argnames=("form_name", "log_space"))
def _delta_parts(form_name, log_space, theta, x, y, at):
    form = forms_lib.get_form(form_name)
    model = form.log_predict if log_space else form.predict
    target = jnp.log(y) if log_space else y
    resid_fn = lambda t: model(t, x) - target  # noqa: E731
    pred_fn = lambda t: model(t, at)  # noqa: E731
    return jax.jacfwd(resid_fn)(theta), resid_fn(theta), jax.jacfwd(pred_fn)(theta), pred_fn(theta)
