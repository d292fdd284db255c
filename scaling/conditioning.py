"""How well does the data pin the law down? The spread of predictions over near-optimal solutions.

A short compute range can leave a long flat valley in the objective: solutions whose objective is within a few
percent of the best disagree by percentage points once extrapolated, and a lower objective is then not a better
law. For each fitted set this module takes every cell of the variable-projection grid (the nonlinear parameters
on a dense grid, the linear ones solved exactly; ``projection.py``), computes its exact objective, and keeps the
cells within ``tolerance`` (relative) of the best objective, plus the optimum itself. Besides the global grid a
fine local grid (``LOCAL_CELLS`` per nonlinear coordinate over +-``LOCAL_SPAN`` in log space) is laid around the
optimum, so a well-determined fit still shows its (small) spread instead of none. The range of their
predictions at any compute is the profile-style spread reported beside every prediction (``spread_lo``,
``spread_hi``). It is a lower bound on the valley's extent (the grid is finite), not a probability interval.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import vlscale.scaling.fit as fit_lib
from vlscale.scaling import forms as forms_lib
from vlscale.scaling import projection
from vlscale.scaling.trace_cache import persistent_jit

LOCAL_SPAN = 2.0
LOCAL_CELLS = {1: 256, 2: 64}


def _local_grid(form, theta: np.ndarray) -> np.ndarray:
    idx = form.profile.nonlinear
    axes = [np.linspace(theta[i] - LOCAL_SPAN, theta[i] + LOCAL_SPAN, LOCAL_CELLS.get(len(idx), 16)) for i in idx]
    return np.stack([a.reshape(-1) for a in np.meshgrid(*axes, indexing="ij")], axis=1)


@persistent_jit(static_argnames=("form_name", "loss"))
def _cells(xs, ys, ws, grids, delta, *, form_name, loss):
    form = forms_lib.get_form(form_name)

    def one(x, y, w, g):
        thetas, feasible = projection.profile_cells(form, loss, g, x, y, w)
        obj = jax.vmap(lambda t: fit_lib._objective(form, loss, t, x, y, w, delta))(thetas)
        return thetas, jnp.where(feasible & jnp.isfinite(obj), obj, jnp.inf)

    return jax.vmap(one, in_axes=(0, 0, 0, 0 if grids.ndim == 3 else None))(xs, ys, ws, grids)


def near_optimal(form: str, xs, ys, ws, curves, *, loss: str, tolerance: float) -> list[np.ndarray]:
    """Per set: thetas [k, p] of the near-optimal solutions (the optimum first)."""
    f = forms_lib.get_form(form)
    best_thetas = [np.asarray(c.theta)[None] for c in curves]
    if f.profile is None:
        return best_thetas
    if not f.profile.nonlinear:
        grids = projection.set_grids(f, xs, ws)
    else:
        grids = np.stack([np.concatenate([projection.grid(f, x[w > 0]), _local_grid(f, np.asarray(c.theta))])
                          for x, w, c in zip(xs, ws, curves)])
    with jax.enable_x64(True):
        thetas, objs = _cells(np.asarray(xs), np.asarray(ys), np.asarray(ws), np.asarray(grids),
                              np.asarray(fit_lib.DEFAULT_HUBER_DELTA), form_name=f.name, loss=loss)
        thetas, objs = np.asarray(thetas), np.asarray(objs)
    out = []
    for i, c in enumerate(curves):
        best = min(float(c.objective), float(np.min(objs[i])))
        keep = objs[i] <= best * (1.0 + tolerance)
        out.append(np.concatenate([best_thetas[i], thetas[i][keep]]))
    return out


def summarize(name_kind: str, computes, widths, bands, tolerance: float, n_solutions: int) -> dict:
    """The ``conditioning`` object of fit.json: widths/bands at the judged computes (error units)."""
    widths = np.asarray(widths, dtype=np.float64)
    bands = np.asarray(bands, dtype=np.float64)
    if widths.size == 0:
        return {"tolerance": tolerance, "n_solutions": n_solutions, "max_spread_pp": 0.0, "max_spread": 0.0,
                "at": None, "ill_conditioned": False}
    k = int(np.argmax(widths))
    ill = bool(np.any(np.isfinite(bands) & (widths > bands)))
    return {"tolerance": tolerance, "n_solutions": n_solutions, "max_spread_pp": float(100 * widths[k]),
            "max_spread": float(widths[k]), "at": float(computes[k]), "ill_conditioned": ill}
