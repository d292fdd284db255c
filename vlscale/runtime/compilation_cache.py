"""JAX's persistent compilation cache, one setting for every command: compiled programs survive between commands.

Compilation dominates a single ``vlscale fit`` or the first evaluation of a checkpoint; with the cache a second
run with the same shapes loads its programs from disk. The directory (``vlscale.runtime.paths.compilation_cache_dir``:
``$VLSCALE_COMPILATION_CACHE``, ``off`` disables it, else ``~/.cache/vlscale/jax``). A directory that cannot be
created or written is skipped silently: the cache only ever saves time, it is never needed for a result.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlscale.runtime.paths import COMPILATION_CACHE_ENV as ENV  # noqa: F401 (jax_cache.ENV: the variable's name)
from vlscale.runtime.paths import compilation_cache_dir

_state: dict = {}


def cache_dir() -> Path | None:
    return compilation_cache_dir()


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def enable(setting: str | None = None, *, min_compile_time_s: float = 0.0) -> Path | None:
    """Turns JAX's persistent compilation cache on; returns the directory in use (None: off or not writable).

    ``setting`` is a training config's ``compilation_cache`` (a folder, ``""`` for the default, ``off``); None means
    "the default, once per process" (the fitter's and the evaluator's entry points). A folder the user (or a
    notebook) already gave JAX is left alone. Programs that compiled faster than ``min_compile_time_s`` are not
    written (0 keeps all of them: the fitter's and evaluator's programs compile in under a second).
    """
    import jax

    current = jax.config.jax_compilation_cache_dir
    cached = _state.get("dir")
    if current and (cached is None or Path(current) != cached):  # chosen outside vlscale: leave it
        path = Path(current)
    elif current and setting is None:  # ours, already on
        path = cached
    else:
        path = compilation_cache_dir(setting)
        if path is None or not _writable(path):
            path = None
        else:
            jax.config.update("jax_compilation_cache_dir", str(path))
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))  # afresh
    # Already on: a caller whose programs compile faster lowers the threshold, never raises it.
    if path is not None and jax.config.jax_persistent_cache_min_compile_time_secs > min_compile_time_s:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    _state["dir"] = path
    return path


def active_dir() -> Path | None:
    """The directory ``enable()`` chose in this process, or None (not enabled, or no usable directory)."""
    return _state.get("dir")
