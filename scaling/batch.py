"""Batched fitting of many point sets (every group of every selection) in one compiled call, and the timing of
JAX compilation. Point sets are padded with zero-weight points to a multiple of ``fit.PAD_MULTIPLE`` so nearby
selections share compiled programs; evaluation points to a multiple of ``EVAL_PAD``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

import vlscale.scaling.fit as fit_lib
from vlscale.scaling.forms import get_form

# Evaluation points (predictions, held-out points, plot grid) are padded to a multiple of this length.
EVAL_PAD = 64


class CompileTimer:
    """Sums JAX compile durations (trace + lower + backend compile) reported while active."""

    def __init__(self):
        self.seconds = 0.0

    def _listener(self, name, duration, **_):
        if name.startswith("/jax/core/compile/"):
            self.seconds += float(duration)

    def __enter__(self):
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._listener)
        return False


def start_grid(form: str, starts: str):
    """Start vectors for the main fit: "seeds" one start (the variable-projection seeds do the rest), "paper" the
    form's full grid (None: the fitter's default)."""
    f = get_form(form)
    if starts == "paper" or f.profile is None:
        return None
    return f.init_grid()[:1]


def pad_sets(sets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """[B, L] arrays of (x, y, w) with each set padded by weight-0 copies of its first point."""
    length = fit_lib.padded_length(max(len(s[0]) for s in sets))
    xs = np.empty((len(sets), length))
    ys = np.empty((len(sets), length))
    ws = np.zeros((len(sets), length))
    for i, (x, y, w) in enumerate(sets):
        n = len(x)
        xs[i, :n], ys[i, :n], ws[i, :n] = x, y, w
        xs[i, n:], ys[i, n:] = x[0], y[0]
    return xs, ys, ws


def fit_sets(sets, form: str, *, loss: str, starts=None, n_seeds: int | None = None):
    """Fits point sets (x, y, weights) of any lengths in one batched call; returns CurveFits in order."""
    xs, ys, ws = pad_sets(sets)
    kwargs = {} if starts is None else {"starts": starts}
    return fit_lib.fit_curves_batched(xs, ys, ws, form, loss=loss,
                                      n_seeds=fit_lib.DEFAULT_SEEDS if n_seeds is None else n_seeds, **kwargs)


def pad_eval(x: np.ndarray) -> np.ndarray:
    n = len(x)
    return np.concatenate([x, np.full(fit_lib.padded_length(n, EVAL_PAD) - n, x[-1])])
