"""Traced programs that survive between commands: ``persistent_jit`` = ``jax.jit`` + a disk cache of the
``jax.export`` serialisation of each traced shape.

JAX's persistent compilation cache (``jax_cache``) saves XLA compilation, but every new process still traces
the Python function again, and tracing the fitter's vmapped Levenberg-Marquardt loop costs more than loading the
compiled program does. Here the traced and lowered program (StableHLO) of each (function, static arguments,
argument shapes) is serialised with ``jax.export`` into ``<jax cache>/exported/``; a later process deserialises it
instead of tracing, and its compilation then hits the compilation cache. It is used only once
``jax_cache.enable()`` has run in the process (``api.fit``/``api.compare`` and the CLI do that), under the same
directory and the same ``$VLSCALE_COMPILATION_CACHE=off`` switch.

A cached entry is only valid for the code that made it: the key holds a fingerprint of this package's sources,
the JAX version, the backend and whether 64-bit mode is on. Forms a user registers at run time are never
cached (their code is not in the fingerprint): calls with such a form, calls under an outer trace, and any
cache that cannot be read or written fall back to the plain ``jax.jit`` silently. The cache only ever saves
time; results are the same either way (tested).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Callable, Sequence

import jax

from vlscale.runtime import files

from vlscale.scaling import forms as forms_lib
from vlscale.runtime import compilation_cache as jax_cache

SUBDIR = "exported"
_BUILTIN_FORMS = {name: form for name, form in forms_lib.FORMS.items()}  # as shipped, before any user registers


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """sha256 over this package's Python sources (any edit invalidates every cached program)."""
    h = hashlib.sha256()
    for p in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _cacheable_form(statics: dict) -> bool:
    name = statics.get("form_name")
    return name is None or (isinstance(name, str) and forms_lib.FORMS.get(name) is _BUILTIN_FORMS.get(name))


class PersistentJit:
    """``jax.jit(fn, static_argnames=...)`` whose traces are kept on disk (see the module text).

    Dynamic arguments are positional arrays; static ones are keywords named in ``static_argnames``.
    """

    def __init__(self, fn: Callable, static_argnames: Sequence[str]):
        self.fn = fn
        self.static_argnames = tuple(static_argnames)
        self.jitted = jax.jit(fn, static_argnames=self.static_argnames)
        self._loaded: dict[str, Callable] = {}
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **statics):
        directory = jax_cache.active_dir()  # only where the fitter's entry points turned the caches on
        if (directory is None or set(statics) - set(self.static_argnames) or not _cacheable_form(statics)
                or any(isinstance(a, jax.core.Tracer) or not hasattr(a, "shape") for a in args)):
            return self.jitted(*args, **statics)
        key = self._key(args, statics)
        call = self._loaded.get(key)
        if call is None:
            call = self._load_or_export(Path(directory) / SUBDIR / f"{key}.bin", args, statics)
            self._loaded[key] = call
        return call(*args)

    def _key(self, args, statics) -> str:
        parts = (
            self.fn.__module__, self.fn.__qualname__, sorted((k, repr(v)) for k, v in statics.items()),
            [(tuple(a.shape), str(a.dtype)) for a in args], jax.__version__, jax.default_backend(),
            bool(jax.config.jax_enable_x64), source_fingerprint(),
        )
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]

    def _load_or_export(self, path: Path, args, statics) -> Callable:
        from jax import export

        exported = None
        try:
            exported = export.deserialize(bytearray(path.read_bytes()))
        except Exception:  # noqa: BLE001 - absent, unreadable or from another build: trace again
            exported = None
        if exported is None:
            specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
            exported = export.export(jax.jit(functools.partial(self.fn, **statics)))(*specs)
            _write_quietly(path, exported.serialize())
        return jax.jit(exported.call)


def _write_quietly(path: Path, data: bytes) -> None:
    """Atomic write (a temp file, then os.replace); a cache that cannot be written is skipped."""
    try:
        files.atomic_write_bytes(path, data)
    except OSError:
        pass


def persistent_jit(static_argnames: Sequence[str] = ()):
    """Decorator form: ``@persistent_jit(static_argnames=("form_name",))``."""
    return lambda fn: PersistentJit(fn, static_argnames)
