"""Functional forms a scaling law can take, each fitted in an unconstrained (log-space) parametrisation.

A ``Form`` bundles what the fitter needs to know about one law: how to predict from an unconstrained vector
``theta``, how ``theta`` maps to the natural parameters (a, b, c, d, ...), the grid of starting points, which
natural parameters sit on a constraint, and -- for variable projection -- which parameters enter linearly.

Why log space: the paper's main law a·(C+b)^c + d has c < 0, b >= 0, d >= 0, a > 0 and parameters that differ by
ten orders of magnitude (b ~ 1e8 GFLOPs, c ~ -0.1, d ~ 0.1). With theta = (log a, log b, log(-c), log d) the bounds
disappear, every coordinate is O(1..20), and E = exp(log a + c·log(C + exp(log b))) + exp(log d) never
overflows for C up to 1e13 (or far beyond). log(C + exp(log b)) equals logaddexp(log C, log b) but costs one
transcendental per point instead of three (the fitter's hot loop is bound by transcendentals).

Adding a form = one predict function, the parameter names, the natural<->theta maps, an init grid and (optionally)
a "profile": the split into nonlinear parameters scanned on a dense grid and nonnegative linear coefficients
solved in closed form (see ``fit.py``).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vlscale.errors import UserError

# Floors used when a natural parameter sits exactly on its bound (e.g. the paper's grid starts a=0, b=0, d=0):
# log space cannot hold 0, so such values map to these. Each is negligible at the data's scale
# (C >= 1e6 GFLOPs, errors ~1e-2..1) yet keeps the gradient of the log-parameter usable.
A_FLOOR = 1e-6  # coefficient of the power term (paper grid starts a=0)
B_FLOOR = 1.0  # compute offset in GFLOPs (paper grid starts b=0); 1 GFLOP vs C >= 1e6
C_FLOOR = 1e-6  # |exponent| for exponents constrained negative / positive
D_FLOOR = 1e-6  # irreducible error floor (paper grid starts d=0)
# Unconstrained coordinates are clipped to this range inside the optimiser so exp() stays finite in float64.
THETA_LIMIT = 200.0
# A fitted parameter counts as "at its bound" when it is this small relative to its reference scale.
BOUND_RTOL = 1e-6

# The paper's 3200-start grid for a·(C+b)^c + d (LAION-AI/scaling-laws-for-comparison, scaling_laws/configs.py).
PAPER_GRID_A = tuple(float(v) for v in range(0, 100, 5))
PAPER_GRID_B = tuple(float(v) for v in range(0, 100, 5))
PAPER_GRID_C = (-0.2, -0.15, -0.1, -0.05)
PAPER_GRID_D = (0.0, 0.0005)
# Chinchilla approach 3 grid (Hoffmann et al. 2022, appendix D.2): alpha, beta, e=log E, a=log A, b=log B.
CHINCHILLA_GRID_ALPHA = (0.0, 0.5, 1.0, 1.5, 2.0)
CHINCHILLA_GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
CHINCHILLA_GRID_LOG_AB = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
# Chinchilla's grid starts alpha, beta at 0; log space maps them to this small positive exponent.
CHINCHILLA_EXP_FLOOR = 0.05


def _log_floor(value, floor):
    return np.log(np.maximum(np.asarray(value, dtype=np.float64), floor))


def _product(*axes) -> np.ndarray:
    return np.array(list(itertools.product(*axes)), dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class Profile:
    """Variable-projection split of a form: theta = assemble(nonlinear, linear coefficients).

    ``basis(nl, x)`` returns the [n, k] columns whose nonnegative combination is the prediction (in linear y);
    ``grid(x)`` the dense [m, len(nl)] grid of nonlinear parameters to scan. ``nonlinear`` names the theta
    indices the nonlinear parameters sit at (so a fine grid can be laid around a fitted theta: conditioning).
    """

    grid: Callable[[np.ndarray], np.ndarray]
    basis: Callable
    assemble: Callable
    nonlinear: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Form:
    """One functional form. ``theta`` is always the unconstrained vector; natural parameters go through maps.

    ``fit_space`` is where residuals of the least-squares objective live: "linear" (y itself, the paper's choice
    for error rates) or "log" (log y, the paper's choice for the D_opt(C), N_opt(C) lines).
    ``bound_refs`` names the parameters that can sit on a constraint and their reference scale for ``at_bound``:
    "x" (smallest input), "y" (largest output) or "one" (absolute).
    """

    name: str
    param_names: tuple[str, ...]
    n_inputs: int
    formula: str
    _predict: Callable
    _to_natural: Callable
    _from_natural: Callable
    _grid: Callable
    fit_space: str = "linear"
    bound_refs: tuple[tuple[str, str], ...] = ()
    profile: Profile | None = None

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    def predict(self, theta, x):
        """y for inputs x ([n] or [n, 2]) under the unconstrained vector theta (jnp; differentiable)."""
        return self._predict(jnp.asarray(theta), jnp.asarray(x))

    def log_predict(self, theta, x):
        """log y, computed without forming y where the form allows (all forms here are positive)."""
        return jnp.log(self.predict(theta, x))

    def to_params(self, theta) -> dict[str, float]:
        values = self._to_natural(np.asarray(theta, dtype=np.float64))
        return {k: float(v) for k, v in zip(self.param_names, values)}

    def from_params(self, params: dict) -> np.ndarray:
        """Natural parameters -> theta; values on or beyond a bound are clipped to the documented floors."""
        missing = [k for k in self.param_names if k not in params]
        if missing:
            raise UserError(f"form {self.name!r} needs parameters {list(self.param_names)}; missing {missing}")
        return np.asarray(self._from_natural(*[float(params[k]) for k in self.param_names]), dtype=np.float64)

    def init_grid(self, x=None, y=None) -> np.ndarray:
        """[n_starts, n_params] unconstrained starting points (x, y may inform data-dependent grids)."""
        return np.asarray(self._grid(x, y), dtype=np.float64)

    def at_bound(self, params: dict[str, float], x, y) -> list[str]:
        """Names of parameters sitting on a constraint (relative to the data's scale)."""
        x = np.asarray(x, dtype=np.float64)
        refs = {"x": float(np.min(x)) if x.size else 1.0, "y": float(np.max(np.abs(y))) if np.size(y) else 1.0, "one": 1.0}
        return [name for name, ref in self.bound_refs if abs(params[name]) <= BOUND_RTOL * refs[ref]]


# ---------------------------------------------------------------- saturation_both: a·(C+b)^c + d
def _log_offset(x, log_b):
    """log(C + b): one log per point (the fitter's hot loop is bound by transcendentals). b = exp(log b) is a
    scalar; it overflows only for log b > 709 in float64 (88 in float32), far beyond THETA_LIMIT's reach in
    float64 and beyond any meaningful offset (b > 1e38 GFLOPs) in float32."""
    return jnp.log(x + jnp.exp(log_b))


def _sat_both_predict(theta, x):
    c = -jnp.exp(theta[2])
    return jnp.exp(theta[0] + c * _log_offset(x, theta[1])) + jnp.exp(theta[3])


def _sat_both_natural(theta):
    return np.exp(theta[0]), np.exp(theta[1]), -np.exp(theta[2]), np.exp(theta[3])


def _sat_both_from(a, b, c, d):
    return [_log_floor(a, A_FLOOR), _log_floor(b, B_FLOOR), _log_floor(-c, C_FLOOR), _log_floor(d, D_FLOOR)]


def _natural_grid(from_natural, *axes) -> np.ndarray:
    """Cartesian product of natural-parameter axes, mapped to theta (bound values go to the floors)."""
    return np.stack(from_natural(*_product(*axes).T), axis=1)


def _sat_both_grid(x=None, y=None):
    return _natural_grid(_sat_both_from, PAPER_GRID_A, PAPER_GRID_B, PAPER_GRID_C, PAPER_GRID_D)


def _sat_from(a, b, c):
    return [_log_floor(a, A_FLOOR), _log_floor(b, B_FLOOR), _log_floor(-c, C_FLOOR)]


def _power_from(a, c):
    return [_log_floor(a, A_FLOOR), np.asarray(c, dtype=np.float64)]


def _power_floor_from(a, c, d):
    return [_log_floor(a, A_FLOOR), _log_floor(-c, C_FLOOR), _log_floor(d, D_FLOOR)]


def _offset_grid(x):
    """Dense (log b, log(-c)) grid: b from far below the data (b -> 0) to beyond it, |c| from 0.005 to 3."""
    lx = np.log(np.asarray(x, dtype=np.float64))
    log_b = np.linspace(lx.min() - 12.0, lx.max() + 4.0, 64)
    log_negc = np.linspace(np.log(0.005), np.log(3.0), 48)
    return _product(log_b, log_negc)


def _offset_basis(nl, x):
    return jnp.exp(-jnp.exp(nl[1]) * _log_offset(x, nl[0]))[:, None]


SATURATION_BOTH = Form(
    name="saturation_both",
    param_names=("a", "b", "c", "d"),
    n_inputs=1,
    formula="a·(C+b)^c + d",
    _predict=_sat_both_predict,
    _to_natural=_sat_both_natural,
    _from_natural=_sat_both_from,
    _grid=_sat_both_grid,
    bound_refs=(("a", "y"), ("b", "x"), ("c", "one"), ("d", "y")),
    profile=Profile(
        nonlinear=(1, 2),
        grid=_offset_grid,
        basis=lambda nl, x: jnp.concatenate([_offset_basis(nl, x), jnp.ones((x.shape[0], 1))], axis=1),
        assemble=lambda nl, coef: jnp.stack(
            [jnp.log(jnp.maximum(coef[0], A_FLOOR)), nl[0], nl[1], jnp.log(jnp.maximum(coef[1], D_FLOOR))]
        ),
    ),
)


# ---------------------------------------------------------------- saturation: a·(C+b)^c
def _sat_predict(theta, x):
    return jnp.exp(theta[0] - jnp.exp(theta[2]) * _log_offset(x, theta[1]))


SATURATION = Form(
    name="saturation",
    param_names=("a", "b", "c"),
    n_inputs=1,
    formula="a·(C+b)^c",
    _predict=_sat_predict,
    _to_natural=lambda t: (np.exp(t[0]), np.exp(t[1]), -np.exp(t[2])),
    _from_natural=_sat_from,
    _grid=lambda x=None, y=None: _natural_grid(_sat_from, PAPER_GRID_A, PAPER_GRID_B, PAPER_GRID_C),
    bound_refs=(("a", "y"), ("b", "x"), ("c", "one")),
    profile=Profile(
        nonlinear=(1, 2),
        grid=_offset_grid,
        basis=_offset_basis,
        assemble=lambda nl, coef: jnp.stack([jnp.log(jnp.maximum(coef[0], A_FLOOR)), nl[0], nl[1]]),
    ),
)


# ---------------------------------------------------------------- power: a·C^c (c of either sign)
def _exponent_grid(x):
    return np.linspace(-3.0, 3.0, 241)[:, None]


POWER = Form(
    name="power",
    param_names=("a", "c"),
    n_inputs=1,
    formula="a·C^c",
    _predict=lambda t, x: jnp.exp(t[0] + t[1] * jnp.log(x)),
    _to_natural=lambda t: (np.exp(t[0]), t[1]),
    _from_natural=_power_from,
    _grid=lambda x=None, y=None: _natural_grid(_power_from, PAPER_GRID_A, PAPER_GRID_C + (0.05, 0.1, 0.2)),
    bound_refs=(("a", "y"),),
    profile=Profile(
        nonlinear=(1,),
        grid=_exponent_grid,
        basis=lambda nl, x: jnp.exp(nl[0] * jnp.log(x))[:, None],
        assemble=lambda nl, coef: jnp.stack([jnp.log(jnp.maximum(coef[0], A_FLOOR)), nl[0]]),
    ),
)


# ---------------------------------------------------------------- power_floor: a·C^c + d (c < 0)
def _negexp_grid(x):
    return np.linspace(np.log(0.005), np.log(3.0), 241)[:, None]


POWER_FLOOR = Form(
    name="power_floor",
    param_names=("a", "c", "d"),
    n_inputs=1,
    formula="a·C^c + d",
    _predict=lambda t, x: jnp.exp(t[0] - jnp.exp(t[1]) * jnp.log(x)) + jnp.exp(t[2]),
    _to_natural=lambda t: (np.exp(t[0]), -np.exp(t[1]), np.exp(t[2])),
    _from_natural=_power_floor_from,
    _grid=lambda x=None, y=None: _natural_grid(_power_floor_from, PAPER_GRID_A, PAPER_GRID_C, PAPER_GRID_D),
    bound_refs=(("a", "y"), ("c", "one"), ("d", "y")),
    profile=Profile(
        nonlinear=(1,),
        grid=_negexp_grid,
        basis=lambda nl, x: jnp.stack([jnp.exp(-jnp.exp(nl[0]) * jnp.log(x)), jnp.ones(x.shape[0])], axis=1),
        assemble=lambda nl, coef: jnp.stack(
            [jnp.log(jnp.maximum(coef[0], A_FLOOR)), nl[0], jnp.log(jnp.maximum(coef[1], D_FLOOR))]
        ),
    ),
)


# ---------------------------------------------------------------- loglinear: log y = alpha·log C + beta
LOGLINEAR = Form(
    name="loglinear",
    param_names=("alpha", "beta"),
    n_inputs=1,
    formula="log y = alpha·log C + beta",
    _predict=lambda t, x: jnp.exp(t[1] + t[0] * jnp.log(x)),
    _to_natural=lambda t: (t[0], t[1]),
    _from_natural=lambda alpha, beta: [alpha, beta],
    _grid=lambda x=None, y=None: _product(np.linspace(-1.0, 1.0, 9), np.linspace(-10.0, 10.0, 9)),
    fit_space="log",
    profile=Profile(
        nonlinear=(0,),
        grid=_exponent_grid,
        basis=lambda nl, x: jnp.exp(nl[0] * jnp.log(x))[:, None],
        assemble=lambda nl, coef: jnp.stack([nl[0], jnp.log(jnp.maximum(coef[0], A_FLOOR))]),
    ),
)


# ---------------------------------------------------------------- chinchilla: E + A/N^alpha + B/D^beta
def _chinchilla_predict(theta, x):
    log_n, log_d = jnp.log(x[:, 0]), jnp.log(x[:, 1])
    terms = jnp.stack(
        [jnp.full_like(log_n, theta[0]), theta[1] - jnp.exp(theta[3]) * log_n, theta[2] - jnp.exp(theta[4]) * log_d]
    )
    return jnp.exp(jax.nn.logsumexp(terms, axis=0))


def _chinchilla_grid(x=None, y=None):
    g = _product(CHINCHILLA_GRID_E, CHINCHILLA_GRID_LOG_AB, CHINCHILLA_GRID_LOG_AB, CHINCHILLA_GRID_ALPHA, CHINCHILLA_GRID_ALPHA)
    floor = CHINCHILLA_EXP_FLOOR
    return np.stack([g[:, 0], g[:, 1], g[:, 2], _log_floor(g[:, 3], floor), _log_floor(g[:, 4], floor)], axis=1)


def _chinchilla_profile_grid(x):
    e = np.linspace(np.log(0.02), np.log(2.0), 24)
    return _product(e, e)


CHINCHILLA = Form(
    name="chinchilla",
    param_names=("E", "A", "B", "alpha", "beta"),
    n_inputs=2,
    formula="E + A/N^alpha + B/D^beta",
    _predict=_chinchilla_predict,
    _to_natural=lambda t: (np.exp(t[0]), np.exp(t[1]), np.exp(t[2]), np.exp(t[3]), np.exp(t[4])),
    _from_natural=lambda E, A, B, alpha, beta: [
        _log_floor(E, D_FLOOR),
        _log_floor(A, A_FLOOR),
        _log_floor(B, A_FLOOR),
        _log_floor(alpha, C_FLOOR),
        _log_floor(beta, C_FLOOR),
    ],
    _grid=_chinchilla_grid,
    bound_refs=(("E", "y"), ("A", "y"), ("B", "y"), ("alpha", "one"), ("beta", "one")),
    profile=Profile(
        nonlinear=(3, 4),
        grid=_chinchilla_profile_grid,
        basis=lambda nl, x: jnp.stack(
            [jnp.ones(x.shape[0]), jnp.exp(-jnp.exp(nl[0]) * jnp.log(x[:, 0])), jnp.exp(-jnp.exp(nl[1]) * jnp.log(x[:, 1]))],
            axis=1,
        ),
        assemble=lambda nl, coef: jnp.stack(
            [
                jnp.log(jnp.maximum(coef[0], D_FLOOR)),
                jnp.log(jnp.maximum(coef[1], A_FLOOR)),
                jnp.log(jnp.maximum(coef[2], A_FLOOR)),
                nl[0],
                nl[1],
            ]
        ),
    ),
)


FORMS: dict[str, Form] = {f.name: f for f in (SATURATION_BOTH, SATURATION, POWER, POWER_FLOOR, LOGLINEAR, CHINCHILLA)}


def register_form(form: Form) -> Form:
    """Adds a form to the registry (the fitter's compiled functions look forms up by name)."""
    if form.name in FORMS and FORMS[form.name] is not form:
        raise UserError(f"a different form is already registered as {form.name!r}; pick another name")
    FORMS[form.name] = form
    return form


def get_form(name) -> Form:
    """The registered form called ``name`` (a registered Form passes through)."""
    if isinstance(name, Form):
        if FORMS.get(name.name) is not name:
            raise UserError(f"form {name.name!r} is not registered; call forms.register_form(form) first")
        return name
    try:
        return FORMS[name]
    except (KeyError, TypeError):
        raise UserError(f"unknown scaling-law form {name!r}; choose one of: {', '.join(FORMS)}") from None
