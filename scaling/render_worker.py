"""Figures drawn by a second process that the CLI starts before it fits.

Importing matplotlib and drawing the first PNG and PDF of a process (fonts, the PDF backend) take longer than
the fit of one selection. ``vlscale fit`` / ``compare`` therefore start ``python -m vlscale.scaling.render_worker``
before they import JAX: the worker imports matplotlib and draws a throw-away figure while the parent fits, then
reads the path of one JSON job file from its stdin -- a list of ``(plots.fit_figure / comparison_set_figure,
folder)`` in a temporary file, so that handing it over never blocks on a pipe -- and
writes each figure's PNG and PDF with ``plots.save_figure``, the code a notebook runs, so the files
are the same.

The parent side is ``Renderer``: ``start()`` (never raises; ``None`` when the worker cannot start, or when
``$VLSCALE_RENDER_WORKER=0``), ``submit(jobs)``, ``finish()`` -> whether every file was written. ``report`` uses
the renderer made current with ``use(renderer)`` and draws in-process whenever the worker did not deliver, so a
missing or failed worker costs time, never output. The worker ignores Ctrl-C (the parent decides) and dies with
its stdin: a parent that exits or is killed closes the pipe, and the worker's read ends.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import os
import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ENV_SWITCH = "VLSCALE_RENDER_WORKER"  # "0" turns the worker off (figures drawn in-process)
FINISH_TIMEOUT_S = 120.0
_current: contextvars.ContextVar[Renderer | None] = contextvars.ContextVar("vlscale_renderer", default=None)


class Renderer:
    """The parent's handle on one worker process (one job)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.expected: list[Path] = []
        self.job_file: str | None = None

    @classmethod
    def start(cls) -> Renderer | None:
        if os.environ.get(ENV_SWITCH, "1").strip() == "0":
            return None
        env = dict(os.environ, MPLBACKEND="Agg")
        debug = os.environ.get("VLSCALE_DEBUG", "").strip() not in ("", "0")
        try:  # its stderr is shown only when debugging (nothing it says would help a user: its failures fall back)
            proc = subprocess.Popen([sys.executable, "-m", "vlscale.scaling.render_worker"], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=None if debug else subprocess.DEVNULL, env=env)
        except OSError:
            return None
        return cls(proc)

    def submit(self, jobs: list[tuple[dict, Path]]) -> bool:
        """Hands the figures over; False (and the worker stopped) when it is already gone or has had its job."""
        if self.job_file is not None or self.proc.stdin.closed:
            return False
        self.expected = [Path(folder) / f"fit.{ext}" for _, folder in jobs for ext in ("png", "pdf")]
        try:
            fd, self.job_file = tempfile.mkstemp(prefix="vlscale-figures-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump([(fig, str(folder)) for fig, folder in jobs], f, default=_to_json)
            self.proc.stdin.write(self.job_file.encode() + b"\n")
            self.proc.stdin.close()
            return True
        except (OSError, ValueError):
            self.close()
            return False

    def finish(self, timeout: float = FINISH_TIMEOUT_S) -> bool:
        """Waits for the worker; True when it exited cleanly and every submitted file exists."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            return False
        return rc == 0 and bool(self.expected) and all(p.is_file() for p in self.expected)

    def close(self) -> None:
        """Stops the worker (if it still runs) without waiting for figures."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self.job_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.job_file)
            self.job_file = None


def _to_json(obj):
    """Figure data is numbers, strings and numpy arrays; arrays keep their dtype (floats round-trip exactly)."""
    import numpy as np

    if isinstance(obj, np.ndarray):
        return {"__array__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"figure data holds a {type(obj).__name__}")


def _from_json(d: dict):
    if "__array__" in d:
        import numpy as np

        return np.asarray(d["__array__"], dtype=np.dtype(d["dtype"]))
    return d


@contextlib.contextmanager
def use(renderer: Renderer | None):
    """Makes ``renderer`` the one ``current()`` returns inside the block; stops it on the way out."""
    token = _current.set(renderer)
    try:
        yield renderer
    finally:
        _current.reset(token)
        if renderer is not None:
            renderer.close()


def current() -> Renderer | None:
    return _current.get()


def _warm_up() -> None:
    """The first figure of a process loads fonts and backends, builds tick and text caches: draw a made-up fit
    (the same code, labels and sizes as a real one) to PNG and PDF while the parent fits."""
    import numpy as np

    from vlscale.scaling import plots

    x = np.logspace(7, 12, 24)
    y = 0.15 + 3.0 * x ** -0.12
    grid = np.logspace(7, 12.5, 50)
    pred = 0.15 + 3.0 * grid ** -0.12
    group = dict(name="warm-up", x=x, y=y, fitted=x < 1e11, frontier=np.ones_like(x, dtype=bool),
                 heldout=[(3e11, 0.3)], grid=grid, pred=pred, lo=pred * 0.98, hi=pred * 1.02,
                 predictions=[(2.6e12, 0.25, 0.24, 0.26)], fit_max_compute=1e11)
    panel = dict(groups=[group], x_name="compute_gflops", ylabel="warm-up acc1 error (1 - value)")
    fig = plots.render(dict(kind="fit", panel=panel, title="warm-up\nwarm-up"), offscreen=True).figure
    for fmt in ("png", "pdf"):
        fig.savefig(io.BytesIO(), format=fmt, dpi=plots.PNG_DPI if fmt == "png" else None)
        fig.set_layout_engine("none")


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the parent's to handle
    import matplotlib

    matplotlib.use("Agg")
    from vlscale.scaling import plots

    _warm_up()
    job_file = sys.stdin.buffer.read().decode().strip()
    if not job_file:  # the parent stopped before it had figures
        return 0
    with open(job_file, encoding="utf-8") as f:
        jobs = json.load(f, object_hook=_from_json)  # plain data only: nothing in a job file can run code
    for figure, folder in jobs:
        plots.save_figure(figure, folder)
    return 0


if __name__ == "__main__":
    code = main()
    # Every file is closed; skip the interpreter's teardown of matplotlib (a fifth of a second the parent would
    # wait for).
    sys.stderr.flush()
    os._exit(code)
