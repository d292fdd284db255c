"""JAX's persistent compilation cache for the fitter: compiled programs survive between commands.

Compilation dominates a single ``vlscale fit``; with the cache a second run with the same shapes loads its
programs from disk. The directory is the trainer's and the evaluator's (``vlscale.paths.compilation_cache_dir``:
``$VLSCALE_COMPILATION_CACHE``, ``off`` disables it, else ``~/.cache/vlscale/jax``). A directory that cannot be
created or written is skipped silently: the cache only ever saves time, it is never needed for a result.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlscale.paths import COMPILATION_CACHE_ENV as ENV  # noqa: F401 (jax_cache.ENV: the variable's name)
from vlscale.paths import compilation_cache_dir

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


def enable() -> Path | None:
    """Turns the cache on once per process (unless the user already configured one); returns the directory used."""
    if "dir" in _state:
        return _state["dir"]
    import jax

    path = cache_dir()
    if jax.config.jax_compilation_cache_dir:  # the user (or a notebook) chose one: leave it
        path = Path(jax.config.jax_compilation_cache_dir)
    elif path is None or not _writable(path):
        path = None
    else:
        jax.config.update("jax_compilation_cache_dir", str(path))
        # Many of our programs compile in under a second; cache them all (the defaults skip those).
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _state["dir"] = path
    return path


def active_dir() -> Path | None:
    """The directory ``enable()`` chose in this process, or None (not enabled, or no usable directory)."""
    return _state.get("dir")
