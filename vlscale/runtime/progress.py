"""The one progress display of every long command (training, evaluation, the study): a tqdm bar on a terminal,
plain lines elsewhere (job logs, CI, captured notebook output), nothing when disabled.

Rate and ETA are measured from the first update, not from construction, so the compilation that precedes the
first step (or batch) never enters them: ``Progress(total).update(done, loss=...)`` after each logged step.
"""

from __future__ import annotations

import sys
import time
from typing import Any


def _isatty(stream) -> bool:
    return bool(getattr(stream, "isatty", None)) and stream.isatty()


def hms(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """``update(done, **fields)`` with the absolute position; ``fields`` are shown as ``name value``.

    ``unit``: what is counted (``step``, ``ex``); ``plain_lines``: on a non-terminal, print one line per update
    (training's log lines) or nothing (evaluation's batches, too many to log).
    """

    def __init__(self, total: int, *, initial: int = 0, desc: str | None = None, unit: str = "step",
                 enabled: bool = True, stream=None, plain_lines: bool = True, leave: bool = True):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit, self.enabled = int(total), desc, unit, enabled
        self.plain_lines = plain_lines
        self._t0: float | None = None
        self._n0 = int(initial)
        self._bar = None
        if enabled and _isatty(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=int(initial), desc=desc, unit=unit, file=self.stream,
                             leave=leave, dynamic_ncols=True,
                             bar_format="{desc}{desc_sep}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {postfix}")
            self._bar.desc_sep = ": " if desc else ""

    def rate_and_eta(self, done: int) -> tuple[float, float]:
        """(units per second, seconds left) since the first update; NaN until two updates apart."""
        now = time.perf_counter()
        if self._t0 is None:
            self._t0, self._n0 = now, done
        elapsed, n = now - self._t0, done - self._n0
        if n <= 0 or elapsed <= 0:
            return float("nan"), float("nan")
        rate = n / elapsed
        return rate, max(self.total - done, 0) / rate

    def update(self, done: int, **fields: Any) -> None:
        if not self.enabled:
            return
        _, eta = self.rate_and_eta(done)
        parts = [f"{k.replace('_', ' ')} {v}" for k, v in fields.items() if v is not None]
        if eta == eta:  # not NaN
            parts.append(f"ETA {hms(eta)}")
        if self._bar is not None:
            self._bar.n = done
            self._bar.set_postfix_str("  ".join(parts), refresh=False)
            self._bar.refresh()
        elif self.plain_lines:
            head = f"{self.desc}: " if self.desc else ""
            self.stream.write(f"{head}{self.unit} {done}/{self.total}  " + "  ".join(parts) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
