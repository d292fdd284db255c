"""Multi-start scaling-law fitting in float64 JAX: every start optimised at once under one jit(vmap(...)).

How a fit works (``fit_curve``):

1. **Starts.** The form's init grid (for ``saturation_both`` exactly the paper's 3200 points a x b x c x d, with
   a=0, b=0, d=0 mapped to the floors of ``forms.py``) plus ``n_seeds`` variable-projection seeds: on a dense grid
   of the nonlinear parameters (for a·(C+b)^c + d: 64 log b x 48 log(-c) cells) the linear coefficients (a, d)
   are solved in closed form as a tiny nonnegative least-squares problem (d >= 0 is a constraint, so every active
   set is tried), and the best cells become starts. That scan is exhaustive over the part of parameter space that
   the paper's grid misses (its b <= 95 GFLOPs and d <= 5e-4 are orders of magnitude below the fitted b ~ 1e8 and
   d ~ 0.1).
2. **Refinement.** A damped Gauss-Newton (Levenberg-Marquardt, Marquardt's diagonal scaling) in the unconstrained
   log-space parametrisation, vmapped over starts, in a ``lax.while_loop`` that stops when every start has
   converged. For the Huber loss the same iteration runs with iteratively reweighted normal equations
   (weights psi(r)/r), and a step is only accepted when it lowers the true objective.
3. **Choice.** The start with the lowest objective wins, as in the paper.

Why this optimiser: from the paper's grid this LM with the log-space step cap reaches the best optimum from
(almost) every start, where scipy's TRF (the paper's procedure), optimistix's LM and optax's L-BFGS reach it from a
fraction (``bench/fit_speed.py --compare-optimizers`` measures all four; the README has the numbers). Our own
loop also handles the Huber loss by reweighting and vmaps over point sets as well as starts. The
variable-projection seeds (``projection.py``) make the result independent of how lucky the grid is.

Why float64: the objective spans 1e-7 (MSE of errors ~1e-3) and parameters ~1e8; float32 cannot resolve the
optimum to the 1e-9 relative agreement we check against scipy. x64 is switched on only around our own calls
(``jax.enable_x64`` context), so float32 model code elsewhere in the process is unaffected.

Objectives (mean over points, weighted by ``weights``): ``"mse"`` -- squared residuals of linear y (the paper's
``curve_fit``; for forms whose ``fit_space`` is "log", such as ``loglinear``, residuals of log y); ``"huber"`` --
Huber loss of log residuals with threshold ``huber_delta`` (Chinchilla's approach 3). ``CurveFit.mse`` always
reports the mean squared residual of linear y.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vlscale.errors import UserError
from vlscale.scaling import forms as forms_lib
from vlscale.scaling import projection
from vlscale.scaling.checks import LOSSES  # noqa: F401 (re-exported)
from vlscale.scaling.checks import as_inputs as _as_inputs
from vlscale.scaling.checks import check_data as _check_data
from vlscale.scaling.checks import check_loss as _check_loss
from vlscale.scaling.projection import RIDGE, spd_solve  # noqa: F401 (spd_solve is part of this module's API)
from vlscale.scaling.trace_cache import persistent_jit

# Chinchilla approach 3 uses delta = 1e-3 on log residuals (Hoffmann et al. 2022, appendix D.2).
DEFAULT_HUBER_DELTA = 1e-3
DEFAULT_MAX_STEPS = 200
DEFAULT_SEEDS = 16
# A start "converged" when its final objective is within this relative distance of the best one.
CONVERGED_RTOL = 1e-6
# LM stopping rules: an accepted step that improves the objective by less than FTOL (relative) ends a start, and
# so does a damping factor above LAMBDA_MAX (no step along any direction lowers the objective any more).
FTOL = 1e-13
# ... and so does a proposed step below XTOL in every log-space coordinate (a relative change of 1e-10).
XTOL = 1e-10
LAMBDA_INIT = 1e-3
LAMBDA_MAX = 1e12
LAMBDA_UP, LAMBDA_DOWN = 4.0, 0.3
# Callers batching sets of different lengths pad them to a multiple of this (zero-weight points), so the
# compiled programs of nearby selections are shared.
PAD_MULTIPLE = 16
# Point counts are padded up to a multiple of this (with weight-0 points) so nearby sizes share one compilation.
PAD_POINTS = 4
# Largest change of any log-space coordinate per step (a factor e in a natural parameter). Without it, Marquardt
# steps from the paper's grid run off along flat directions (c -> 0, b -> inf, d -> 0) and only 2 % of its 3200
# starts reach the optimum on the MaMMUT ImageNet frontier; with it, (almost) all do (bench/fit_speed.py).
MAX_STEP = 1.0


def padded_length(n: int, multiple: int = PAD_MULTIPLE) -> int:
    return -(-int(n) // multiple) * multiple


@dataclasses.dataclass
class CurveFit:
    """The winning start of a multi-start fit, with what is needed to judge it."""

    form: str
    params: dict[str, float]  # natural parameters (a, b, c, d, ...)
    theta: np.ndarray  # the unconstrained (log-space) vector that won
    objective: float  # the chosen loss at theta (mean over points, weighted)
    mse: float  # mean squared residual of linear y, whatever the loss
    grad_norm: float  # |d objective / d theta| at theta: ~0 at an interior optimum
    n_starts: int  # grid (or given) starts plus variable-projection seeds
    converged_starts: int  # starts ending within CONVERGED_RTOL (relative) of the best objective
    at_bound: list[str]  # parameters on a constraint (see Form.at_bound)
    n_points: int  # points with nonzero weight
    loss: str  # "mse" | "huber"

    def predict(self, x) -> np.ndarray:
        form = forms_lib.get_form(self.form)
        x = _as_inputs(x, form, "x")
        with jax.enable_x64(True):
            return np.asarray(_predict_jit(form.name, np.asarray(self.theta), np.asarray(x)))


# ----------------------------------------------------------------------------------------------- objective
def _residuals(form, loss, theta, x, y):
    if loss == "mse" and form.fit_space == "linear":
        return form.predict(theta, x) - y
    return form.log_predict(theta, x) - jnp.log(y)


def _rho(loss, r, delta):
    """Per-point loss, its derivative and the IRLS curvature weight psi(r)/r."""
    if loss == "mse":
        return r * r, 2.0 * r, jnp.full_like(r, 2.0)
    a = jnp.abs(r)
    rho = jnp.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))
    psi = jnp.clip(r, -delta, delta)
    return rho, psi, jnp.where(a <= delta, 1.0, delta / jnp.maximum(a, 1e-300))


def _objective(form, loss, theta, x, y, w, delta):
    r = _residuals(form, loss, theta, x, y)
    rho, _, _ = _rho(loss, r, delta)
    return jnp.sum(w * rho) / jnp.sum(w)


def _lm_solve(form, loss, max_steps, theta0, x, y, w, delta):
    """Levenberg-Marquardt from one start; returns (theta, objective, steps taken)."""
    wsum = jnp.sum(w)
    objective = functools.partial(_objective, form, loss, x=x, y=y, w=w, delta=delta)
    residuals = functools.partial(_residuals, form, loss, x=x, y=y)

    def safe_objective(theta):
        f = objective(theta)
        return jnp.where(jnp.isfinite(f), f, jnp.inf)

    def body(state):
        theta, f, lam, n_iter, _ = state
        r = residuals(theta)
        jac = jax.jacfwd(residuals)(theta)
        _, psi, omega = _rho(loss, r, delta)
        jac = jnp.where(jnp.isfinite(jac), jac, 0.0)
        grad = jac.T @ (w * psi) / wsum
        hess = (jac * (w * omega)[:, None]).T @ jac / wsum
        diag = jnp.diag(hess)
        damped = hess + jnp.diag(lam * diag + RIDGE * (jnp.max(diag) + 1e-300))
        step = -spd_solve(damped, grad)
        step = step * jnp.minimum(1.0, MAX_STEP / (jnp.max(jnp.abs(step)) + 1e-300))
        trial = jnp.clip(theta + step, -forms_lib.THETA_LIMIT, forms_lib.THETA_LIMIT)
        f_trial = safe_objective(trial)
        ok = jnp.all(jnp.isfinite(trial)) & (f_trial < f)
        theta = jnp.where(ok, trial, theta)
        small = ok & (f - f_trial <= FTOL * f)
        f = jnp.where(ok, f_trial, f)
        lam = jnp.where(ok, jnp.maximum(lam * LAMBDA_DOWN, 1e-12), lam * LAMBDA_UP)
        done = small | (lam > LAMBDA_MAX) | (jnp.max(jnp.abs(step)) <= XTOL)
        return theta, f, lam, n_iter + 1, done

    def cond(state):
        return (state[3] < max_steps) & ~state[4]

    theta0 = jnp.clip(theta0, -forms_lib.THETA_LIMIT, forms_lib.THETA_LIMIT)
    init = (theta0, safe_objective(theta0), jnp.asarray(LAMBDA_INIT, theta0.dtype), jnp.asarray(0), jnp.asarray(False))
    theta, f, _, steps, _ = jax.lax.while_loop(cond, body, init)
    return theta, f, steps


# ----------------------------------------------------------------------------------------------- compiled cores
@functools.partial(jax.jit, static_argnames=("form_name",))
def _predict_jit(form_name, theta, x):
    return forms_lib.get_form(form_name).predict(theta, x)


def _fit_sets(x, y, w, starts, nl_grid, delta, *, form_name, loss, max_steps, n_seeds):
    """For each of B point sets: seeds + shared starts, all refined by LM. Returns per-start arrays [B, S, ...]."""
    form = forms_lib.get_form(form_name)
    solve = functools.partial(_lm_solve, form, loss, max_steps)

    def one_set(x, y, w, set_starts, nl_grid):
        if n_seeds:
            seeds = projection.profile_seeds(form, loss, n_seeds, nl_grid, x, y, w)
            set_starts = jnp.concatenate([set_starts, seeds.astype(set_starts.dtype)], axis=0)
        thetas, objs, steps = jax.vmap(solve, in_axes=(0, None, None, None, None))(set_starts, x, y, w, delta)
        return thetas, jnp.where(jnp.isfinite(objs), objs, jnp.inf), steps

    # starts [S, p] are shared by every set, [B, S, p] gives each set its own (warm starts); likewise x [n] is
    # shared (bootstrap: computed on once) and [B, n] per set, and the seed grid [m, k] or [B, m, k] per set.
    grid_axis = 0 if nl_grid.ndim == 3 else None
    return jax.vmap(lambda x, y, w, s, g: one_set(x, y, w, s, g),
                    in_axes=(_x_axis(form, x), 0, 0, 0 if starts.ndim == 3 else None, grid_axis))(x, y, w, starts, nl_grid)


_fit_sets_jit = jax.jit(_fit_sets, static_argnames=("form_name", "loss", "max_steps", "n_seeds"))


@persistent_jit(static_argnames=("form_name", "loss", "max_steps", "n_seeds"))
def _fit_sets_best(x, y, w, starts, nl_grid, delta, *, form_name, loss, max_steps, n_seeds):
    """Like _fit_sets but reduced to each set's winner: theta, objective, |grad|, linear MSE, converged count."""
    form = forms_lib.get_form(form_name)
    thetas, objs, _ = _fit_sets(
        x, y, w, starts, nl_grid, delta, form_name=form_name, loss=loss, max_steps=max_steps, n_seeds=n_seeds
    )

    def reduce(x, y, w, thetas, objs):
        best = jnp.argmin(objs)
        theta, f_best = thetas[best], objs[best]
        grad = jax.grad(functools.partial(_objective, form, loss))(theta, x, y, w, delta)
        mse = jnp.sum(w * (form.predict(theta, x) - y) ** 2) / jnp.sum(w)
        converged = jnp.sum(objs <= f_best + CONVERGED_RTOL * jnp.abs(f_best))
        return theta, f_best, jnp.linalg.norm(grad), mse, converged

    return jax.vmap(reduce, in_axes=(_x_axis(form, x), 0, 0, 0, 0))(x, y, w, thetas, objs)


def _x_axis(form, x):
    """0 when x carries a leading set axis ([B, n] or [B, n, 2]), None when one x is shared by all sets."""
    return 0 if x.ndim == (2 if form.n_inputs == 1 else 3) else None


def _summarise(form, loss, theta, objective, grad_norm, mse, converged, n_starts, x, y, w) -> CurveFit:
    theta = np.asarray(theta, dtype=np.float64)
    params = form.to_params(theta)
    used = w > 0
    return CurveFit(
        form=form.name,
        params=params,
        theta=theta,
        objective=float(objective),
        mse=float(mse),
        grad_norm=float(grad_norm),
        n_starts=int(n_starts),
        converged_starts=int(converged),
        at_bound=form.at_bound(params, x[used], y[used]),
        n_points=int(np.count_nonzero(used)),
        loss=loss,
    )


def _resolve_starts(form, starts, x, y) -> np.ndarray:
    if starts is None:
        return form.init_grid(x, y)
    starts = np.asarray(starts, dtype=np.float64)
    if starts.ndim == 1:
        starts = starts[None]
    if starts.ndim != 2 or starts.shape[1] != form.n_params or not np.all(np.isfinite(starts)):
        raise UserError(f"starts for form {form.name!r} must be a finite [n_starts, {form.n_params}] array (theta)")
    return starts


# ----------------------------------------------------------------------------------------------- public API
def fit_curve(
    x,
    y,
    form="saturation_both",
    *,
    loss: str = "mse",
    huber_delta: float = DEFAULT_HUBER_DELTA,
    starts=None,
    max_steps: int = DEFAULT_MAX_STEPS,
    weights=None,
    n_seeds: int = DEFAULT_SEEDS,
) -> CurveFit:
    """Fits ``form`` to (x, y) from every start (init grid + variable-projection seeds) and keeps the best.

    ``starts`` (theta vectors, [n_starts, n_params]) replaces the form's init grid; ``n_seeds=0`` turns off the
    variable-projection seeds (the paper's procedure is then ``starts=form.init_grid(), n_seeds=0``).
    """
    form = forms_lib.get_form(form)
    _check_loss(loss, huber_delta)
    x, y, w = _check_data(x, y, form, weights)
    return fit_curves_batched(
        x[None], y[None], w[None], form, loss=loss, huber_delta=huber_delta, starts=starts, max_steps=max_steps,
        n_seeds=n_seeds,
    )[0]


def fit_curves_batched(
    xs,
    ys,
    masks=None,
    form="saturation_both",
    *,
    loss: str = "mse",
    huber_delta: float = DEFAULT_HUBER_DELTA,
    starts=None,
    max_steps: int = DEFAULT_MAX_STEPS,
    n_seeds: int = DEFAULT_SEEDS,
) -> list[CurveFit]:
    """Fits many point sets of equal length at once (bootstrap resamples, leave-one-out, several models).

    xs: [B, n] (or [B, n, 2]; a single [n] array is shared by all sets), ys: [B, n], masks: [B, n] booleans or
    nonnegative weights (a bootstrap resample is the full set with multiplicity weights). Every set gets the same
    ``starts`` plus its own ``n_seeds`` variable-projection seeds, so a batched fit equals the individual fits.
    """
    form = forms_lib.get_form(form)
    _check_loss(loss, huber_delta)
    ys = np.asarray(ys, dtype=np.float64)
    if ys.ndim != 2:
        raise UserError(f"ys must be [n_sets, n_points]; got shape {ys.shape}")
    n_sets, n = ys.shape
    xs = np.asarray(xs, dtype=np.float64)
    if xs.ndim == (1 if form.n_inputs == 1 else 2):
        xs = np.broadcast_to(xs, (n_sets,) + xs.shape)
    masks = np.ones_like(ys) if masks is None else np.broadcast_to(np.asarray(masks, dtype=np.float64), ys.shape)
    checked = [_check_data(xs[i], ys[i], form, masks[i]) for i in range(n_sets)]
    xs = np.stack([c[0] for c in checked])
    ws = np.stack([c[2] for c in checked])
    start_grid = _resolve_starts(form, starts, xs[0], ys[0])
    best = fit_weighted_sets(
        form, xs, ys, ws, start_grid, loss=loss, huber_delta=huber_delta, max_steps=max_steps, n_seeds=n_seeds
    )
    n_starts = start_grid.shape[0] + best["n_seeds"]
    failed = np.flatnonzero(~np.isfinite(best["objective"]))
    if failed.size:
        raise UserError(
            f"no start reached a finite {loss} objective for {failed.size} point set(s) (first: #{failed[0]}); "
            f"check that y is on the scale form {form.name!r} expects"
        )
    return [
        _summarise(form, loss, best["theta"][i], best["objective"][i], best["grad_norm"][i], best["mse"][i],
                   best["converged"][i], n_starts, xs[i], ys[i], ws[i])
        for i in range(n_sets)
    ]


def _pad_points(form, xs, ys, ws):
    """Pads the point axis to a multiple of PAD_POINTS with weight-0 copies of the first point, so fits of 13, 14
    or 16 points share one compiled program (compilation, not running, dominates small fits)."""
    n = ys.shape[1]
    extra = -n % PAD_POINTS
    if not extra:
        return xs, ys, ws
    point_axis = 1 if _x_axis(form, xs) == 0 else 0
    x_pad = np.repeat(np.take(xs, [0], axis=point_axis), extra, axis=point_axis)
    return (
        np.concatenate([xs, x_pad], axis=point_axis),
        np.concatenate([ys, np.repeat(ys[:, :1], extra, axis=1)], axis=1),
        np.concatenate([ws, np.zeros((ws.shape[0], extra))], axis=1),
    )


def fit_weighted_sets(form, xs, ys, ws, starts, *, loss="mse", huber_delta=DEFAULT_HUBER_DELTA,
                      max_steps=DEFAULT_MAX_STEPS, n_seeds=DEFAULT_SEEDS) -> dict[str, np.ndarray]:
    """The array core of ``fit_curves_batched`` for already-checked inputs (no per-set Python work).

    xs [B, n(, 2)] (or one shared [n(, 2)]), ys and ws [B, n], starts [S, p] theta shared by all sets or
    [B, S, p] per set. Returns arrays keyed theta [B, p], objective, grad_norm, mse, converged [B] and the int
    n_seeds actually used.
    """
    form = forms_lib.get_form(form)
    n_seeds = int(n_seeds) if form.profile is not None else 0
    # Each set's seed grid comes from its own points, so a set fitted with others equals the set fitted alone.
    nl_grid = projection.set_grids(form, xs, ws) if n_seeds else np.zeros((1, 1))
    n_seeds = min(n_seeds, nl_grid.shape[-2])
    xs, ys, ws = _pad_points(form, np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64),
                             np.asarray(ws, dtype=np.float64))
    if _x_axis(form, xs) == 0 and np.all(xs == xs[:1]):
        xs = xs[0]  # one copy: the per-x work (profile basis) then runs once, not once per set
    with jax.enable_x64(True):
        out = _fit_sets_best(
            # numpy arguments: jnp.asarray would run (and lower) a conversion program per argument
            xs, ys, ws, np.asarray(starts, dtype=np.float64), np.asarray(nl_grid, dtype=np.float64),
            np.asarray(float(huber_delta)), form_name=form.name, loss=loss, max_steps=int(max_steps), n_seeds=n_seeds,
        )
        theta, objective, grad_norm, mse, converged = (np.asarray(a) for a in out)
    return dict(theta=theta, objective=objective, grad_norm=grad_norm, mse=mse, converged=converged, n_seeds=n_seeds)


def fit_all_starts(x, y, form="saturation_both", *, loss="mse", huber_delta=DEFAULT_HUBER_DELTA, starts=None,
                   max_steps=DEFAULT_MAX_STEPS, n_seeds=0):
    """Every start's final (theta, objective, steps): for convergence studies and the speed bench."""
    form = forms_lib.get_form(form)
    _check_loss(loss, huber_delta)
    x, y, w = _check_data(x, y, form)
    start_grid = _resolve_starts(form, starts, x, y)
    nl_grid = projection.grid(form, x)
    n_seeds = min(int(n_seeds), nl_grid.shape[0]) if form.profile is not None else 0
    with jax.enable_x64(True):
        out = _fit_sets_jit(
            jnp.asarray(x[None]), jnp.asarray(y[None]), jnp.asarray(w[None]), jnp.asarray(start_grid),
            jnp.asarray(nl_grid), jnp.asarray(float(huber_delta)), form_name=form.name, loss=loss,
            max_steps=int(max_steps), n_seeds=n_seeds,
        )
        thetas, objs, steps = (np.asarray(a)[0] for a in out)
    return thetas, objs, steps
