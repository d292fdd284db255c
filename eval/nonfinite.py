"""Scores are finite or absent: an evaluation that meets a NaN or infinite feature, logit or similarity stops.

A metric computed from such scores is meaningless (with NaN weights every image would "rank" its class first) and
would decide a fit or a comparison, so no row is written for it. The runner adds the checkpoint and the task to the
message (``vlscale.eval.runner.evaluate_checkpoint``).
"""

from __future__ import annotations

import numpy as np

from vlscale.errors import UserError


class NonFiniteScores(UserError):
    """Some feature, logit or similarity of an evaluation is NaN or infinite."""


def check_rows(ok: np.ndarray, what: str, unit: str) -> None:
    """Raises ``NonFiniteScores`` when any row of ``ok`` (per-row "all finite" flags) is False."""
    ok = np.asarray(ok, bool)
    bad = int(np.sum(~ok))
    if bad:
        raise NonFiniteScores(f"{bad} of {ok.size} {unit} give NaN or infinite {what}")


def check_array(x: np.ndarray, what: str, unit: str) -> None:
    """Raises ``NonFiniteScores`` when any row of ``x`` [rows, ...] has a NaN or infinite entry."""
    x = np.asarray(x)
    check_rows(np.isfinite(x).reshape(len(x), -1).all(axis=1), what, unit)
