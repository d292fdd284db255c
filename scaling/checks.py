"""Input checks shared by the fitter and the interval code: one-line ``UserError`` naming what to fix."""

from __future__ import annotations

import numpy as np

from vlscale.errors import UserError

LOSSES = ("mse", "huber")


def as_inputs(x, form, what: str) -> np.ndarray:
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be numeric; got {type(x).__name__}") from None
    if form.n_inputs == 1:
        if x.ndim != 1 and not (x.ndim == 2 and x.shape[1] == 1):
            raise UserError(f"{what} for form {form.name!r} must be a 1-D array of compute values; got shape {x.shape}")
        x = x.reshape(-1)
    elif x.ndim != 2 or x.shape[1] != form.n_inputs:
        raise UserError(f"{what} for form {form.name!r} must have shape [n, {form.n_inputs}] (N, D); got {x.shape}")
    if not np.all(np.isfinite(x)) or not np.all(x > 0):
        raise UserError(f"{what} must be finite and > 0 (form {form.name!r} takes logs); fix or drop those rows")
    return x


def check_data(x, y, form, weights=None):
    x = as_inputs(x, form, "x")
    try:
        y = np.asarray(y, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise UserError(f"y must be numeric; got {type(y).__name__}") from None
    if y.shape[0] != x.shape[0]:
        raise UserError(f"x and y differ in length ({x.shape[0]} vs {y.shape[0]}); pass one y per x")
    if not np.all(np.isfinite(y)) or not np.all(y > 0):
        raise UserError(f"y must be finite and > 0 for form {form.name!r} (errors in (0, 1]); fix or drop those rows")
    if weights is None:
        w = np.ones_like(y)
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != y.shape or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise UserError("weights must be finite, >= 0 and one per point")
    n_used = int(np.count_nonzero(w))
    if n_used < form.n_params:
        raise UserError(
            f"form {form.name!r} has {form.n_params} parameters but only {n_used} points were given; "
            "add points or choose a form with fewer parameters"
        )
    return x, y, w


def check_loss(loss: str, huber_delta: float):
    if loss not in LOSSES:
        raise UserError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")
    if not (np.isfinite(huber_delta) and huber_delta > 0):
        raise UserError(f"huber_delta must be > 0; got {huber_delta}")
