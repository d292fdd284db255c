"""Checksums of a checkpoint's arrays: computed from the state before it is saved, recorded in the checkpoint's
``meta`` item, and compared with what a restore reads back.

Orbax's own checks cover the OCDBT manifest and B-tree nodes and the zarr3 shard indices (crc32c in TensorStore);
the chunk data itself (zstd-compressed array bytes) carries no checksum, so a flipped bit there decodes to a
wrong number without an error. This module closes that gap for every array of the state.

The checksum of an array is two 32-bit sums over its raw bits taken as 32-bit words ``w[i]`` (narrower dtypes
widened per element) in row-major order: ``sum(w[i] * (2i+1))`` and ``sum(rotl(w[i], 13) ^ (i * 0x9E3779B9))``,
both mod 2**32. The first changes under any single flipped bit (an odd multiplier keeps a power of two nonzero
mod 2**32); the second is an independent mix, so swapped or shifted data is caught too. Both are sums, so they
are computed on the device where the arrays live (sharded over any mesh, over any number of hosts: a jitted
reduction) and equally in numpy for host arrays (the CPU backend's too); the two agree bit for bit (tests/runtime/test_integrity.py).
They guard against accidental corruption (bad disks, truncated copies, a file from another checkpoint), not a
deliberate forger, who could rewrite the record as well.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ALGORITHM = "sum2x32-v1"
_GOLDEN = 0x9E3779B9
_ROT = 13


def leaf_name(path) -> str:
    """A pytree key path as "params/visual/proj" (dict keys, attribute names and indices joined by "/")."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _words_np(x) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(x))
    if a.dtype == np.bool_:
        return a.reshape(-1).astype(np.uint32)
    size = a.dtype.itemsize
    if size == 4:
        return a.reshape(-1).view(np.uint32)
    if size in (1, 2):
        return a.reshape(-1).view(np.uint8 if size == 1 else np.uint16).astype(np.uint32)
    if size == 8:
        return a.reshape(-1).view(np.uint32)
    raise TypeError(f"no checksum for dtype {a.dtype}")


def checksum_np(x) -> tuple[int, int]:
    """The checksum of one host array (see the module docstring)."""
    w = _words_np(x)
    i = np.arange(w.size, dtype=np.uint32)
    with np.errstate(over="ignore"):
        h1 = np.sum(w * (i * np.uint32(2) + np.uint32(1)), dtype=np.uint32)
        rot = (w << np.uint32(_ROT)) | (w >> np.uint32(32 - _ROT))
        h2 = np.sum(rot ^ (i * np.uint32(_GOLDEN)), dtype=np.uint32)
    return int(h1), int(h2)


def _checksum_jnp(x):
    import jax
    import jax.numpy as jnp

    if x.dtype == jnp.bool_:
        w = x.reshape(-1).astype(jnp.uint32)
    else:
        size = jnp.dtype(x.dtype).itemsize
        if size == 4:
            w = jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
        elif size in (1, 2):
            w = jax.lax.bitcast_convert_type(x, jnp.uint8 if size == 1 else jnp.uint16).reshape(-1).astype(jnp.uint32)
        else:
            w = jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    i = jax.lax.iota(jnp.uint32, w.size)
    h1 = jnp.sum(w * (i * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)
    rot = (w << jnp.uint32(_ROT)) | (w >> jnp.uint32(32 - _ROT))
    h2 = jnp.sum(rot ^ (i * jnp.uint32(_GOLDEN)), dtype=jnp.uint32)
    return jnp.stack([h1, h2])


_JITTED = None


def _on_host(x) -> bool:
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return True
    try:
        return x.is_fully_addressable and all(d.platform == "cpu" for d in x.sharding.device_set)
    except AttributeError:
        return False


def checksums(tree) -> dict[str, list[int]]:
    """{leaf name: [h1, h2]} for every array of ``tree`` (device arrays, sharded or not, or host arrays).

    Accelerator and multi-host arrays are reduced where they live (a small jitted program per distinct shape; a
    pair of uint32 per leaf comes back), so a multi-host state is summed over its shards without gathering it and
    every process gets the same result. Arrays already in host memory (numpy, the CPU backend) are summed in
    numpy: the same numbers, without compiling anything.
    """
    import jax

    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    names = [leaf_name(p) for p, _ in leaves]
    arrays = [x for _, x in leaves]
    if all(_on_host(x) for x in arrays):  # host memory already (numpy, or the CPU backend): no compiling
        return {n: list(checksum_np(x)) for n, x in zip(names, arrays)}
    return dict(zip(names, device_checksums(arrays)))


def device_checksums(arrays) -> list[list[int]]:
    """The checksums of jax arrays computed where they live (the path for accelerators and multi-host states)."""
    import jax

    global _JITTED
    if _JITTED is None:
        # One small program per distinct (shape, dtype, sharding): layers and Adam moments repeat shapes.
        _JITTED = jax.jit(_checksum_jnp)
    out = jax.device_get([_JITTED(x) for x in arrays])  # dispatched asynchronously, fetched together
    return [[int(v[0]), int(v[1])] for v in out]


def record(tree) -> dict[str, Any]:
    """What ``meta["integrity"]`` holds: the algorithm and every leaf's checksum."""
    return {"algorithm": ALGORITHM, "arrays": checksums(tree)}


def mismatches(recorded: dict, tree, *, prefix: str = "") -> list[str]:
    """Names of the leaves of ``tree`` whose checksum differs from ``recorded`` (leaves it lacks count too).

    ``prefix`` is prepended to the tree's leaf names (a partial restore of ``params`` checks "params/...").
    """
    arrays = recorded.get("arrays", {})
    got = checksums(tree)
    return [name for name, value in ((prefix + n, v) for n, v in got.items()) if arrays.get(name) != value]
