"""Checksums of a checkpoint's arrays: computed from the state before it is saved, recorded in the checkpoint's
``meta`` item, and compared with what a restore reads back.

Orbax's own checks cover the OCDBT manifest and B-tree nodes and the zarr3 shard indices (crc32c in TensorStore);
the chunk data itself (zstd-compressed array bytes) carries no checksum, so a flipped bit there decodes to a
wrong number without an error. This module closes that gap for every array of the state.

The checksum of an array is two 32-bit sums over its raw bits taken as 32-bit words ``w[i]`` (narrower dtypes
widened per element) in row-major order: ``sum(w[i] * (2i+1))`` and ``sum(rotl(w[i], 13) ^ (i * 0x9E3779B9))``,
both mod 2**32. The first changes under any single flipped bit (an odd multiplier keeps a power of two nonzero
mod 2**32); the second is an independent mix, so swapped or shifted data is caught too. Both are sums, so they
are computed shard by shard on the host that holds each shard (sharded over any mesh, over any number of hosts;
one small all-gather adds the hosts' sums), and agree bit for bit with the sums over the whole array
(tests/runtime/test_integrity.py).
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


def _words_np(a: np.ndarray) -> tuple[np.ndarray, int]:
    """(the array's raw bits as uint32 words in row-major order, words per element)."""
    a = np.ascontiguousarray(a)
    if a.dtype == np.bool_:
        return a.reshape(-1).astype(np.uint32), 1
    size = a.dtype.itemsize
    if size == 4:
        return a.reshape(-1).view(np.uint32), 1
    if size in (1, 2):
        return a.reshape(-1).view(np.uint8 if size == 1 else np.uint16).astype(np.uint32), 1
    if size == 8:
        return a.reshape(-1).view(np.uint32), 2
    raise TypeError(f"no checksum for dtype {a.dtype}")


def _sums(w: np.ndarray, i: np.ndarray) -> tuple[int, int]:
    """The two sums over words ``w`` at global word positions ``i`` (both uint32), mod 2**32."""
    with np.errstate(over="ignore"):
        h1 = np.sum(w * (i * np.uint32(2) + np.uint32(1)), dtype=np.uint32)
        rot = (w << np.uint32(_ROT)) | (w >> np.uint32(32 - _ROT))
        h2 = np.sum(rot ^ (i * np.uint32(_GOLDEN)), dtype=np.uint32)
    return int(h1), int(h2)


def checksum_np(x) -> tuple[int, int]:
    """The checksum of one whole host array (see the module docstring)."""
    w, _ = _words_np(np.asarray(x))
    return _sums(w, np.arange(w.size, dtype=np.uint32))


def _global_positions(shape: tuple, index: tuple, block: tuple, per_elem: int) -> np.ndarray:
    """The row-major word positions (uint32, wrapping) in the whole array of a block at ``index`` (slices)."""
    strides = [int(np.prod(shape[k + 1:], dtype=np.int64)) * per_elem for k in range(len(shape))]
    pos = np.zeros(block, dtype=np.uint64)
    for k, sl in enumerate(index):
        start = sl.start or 0
        r = (np.arange(block[k], dtype=np.uint64) + np.uint64(start)) * np.uint64(strides[k])
        pos = pos + r.reshape([-1 if j == k else 1 for j in range(len(block))])
    pos = pos.reshape(-1, 1) + np.arange(per_elem, dtype=np.uint64).reshape(1, -1)
    return (pos.reshape(-1) % np.uint64(1 << 32)).astype(np.uint32)


def _partial(x) -> tuple[int, int]:
    """The sums over the part of ``x`` this process holds (each shard counted once, at its global positions);
    the sums of all processes add up to ``checksum_np`` of the whole array."""
    if isinstance(x, np.ndarray) or np.isscalar(x) or not hasattr(x, "addressable_shards"):
        return checksum_np(x)
    h1 = h2 = 0
    for shard in x.addressable_shards:
        if shard.replica_id != 0:  # a replicated block is counted by its first copy only
            continue
        data = np.asarray(shard.data)
        w, per_elem = _words_np(data)
        index = shard.index if shard.index else ()
        if data.shape == tuple(x.shape):  # the whole array (one device, or replicated)
            a, b = _sums(w, np.arange(w.size, dtype=np.uint32))
        else:
            a, b = _sums(w, _global_positions(tuple(x.shape), tuple(index), data.shape, per_elem))
        h1, h2 = (h1 + a) % (1 << 32), (h2 + b) % (1 << 32)
    return h1, h2


def checksums(tree) -> dict[str, list[int]]:
    """{leaf name: [h1, h2]} for every array of ``tree`` (jax arrays, sharded over any mesh, or host arrays).

    Each process sums the shards it holds (fetched to host memory shard by shard, as Orbax's save does) at their
    global positions; a state spread over several processes is then combined with one small all-gather, so no
    array is ever gathered whole and every process gets the same result. Nothing is compiled.
    """
    import jax

    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    names = [leaf_name(p) for p, _ in leaves]
    partial = np.array([_partial(x) for _, x in leaves], dtype=np.uint32).reshape(-1, 2)
    spread = any(hasattr(x, "is_fully_addressable") and not x.is_fully_addressable for _, x in leaves)
    if spread and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        every = np.asarray(multihost_utils.process_allgather(partial))  # [processes, leaves, 2]
        partial = np.sum(every.astype(np.uint64), axis=0) % (1 << 32)
    return {n: [int(v[0]), int(v[1])] for n, v in zip(names, partial)}


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
