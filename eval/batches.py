"""Fixed-size, padded, batch-sharded evaluation batches: every example counts exactly once, on any host count.

A dataset of ``n`` examples is cut into global batches of ``batch_size`` (the last one padded). Host ``p`` of
``P`` loads rows ``[p * B/P, (p+1) * B/P)`` of each global batch, which become one global array sharded over the
mesh's batch axes. Every batch carries the example ``index`` (-1 for padding) and a ``valid`` flag (0 for padding
and for examples whose image could not be decoded), and both travel through the computation with the outputs, so
gathering puts results back in dataset order whatever the device order is. One compiled shape per batch size.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any, Callable, Mapping

import jax
import numpy as np

# Decoding and resizing run in threads (PIL releases the GIL); one per core, at most this many.
MAX_LOAD_THREADS = 16


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def host_indices(batch: int, batch_size: int, n: int) -> np.ndarray:
    """The dataset indices this host loads for global batch ``batch``; -1 marks padding past the end."""
    count, index = jax.process_count(), jax.process_index()
    if batch_size % count:
        raise ValueError(f"eval batch size {batch_size} must be a multiple of the host count {count}")
    per_host = batch_size // count
    idx = batch * batch_size + index * per_host + np.arange(per_host)
    return np.where(idx < n, idx, -1)


def check_batch_size(batch_size: int, mesh) -> None:
    from vlscale.errors import UserError

    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size < 1 or batch_size % shards:
        raise UserError(f"--batch-size {batch_size} must be a positive multiple of the {shards} data-parallel devices")


def to_global(local: Mapping[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """Host-local rows -> global arrays sharded on the batch axis (``vlscale.runtime.sharding.batch_sharding``)."""
    from vlscale.runtime.sharding import batch_sharding

    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
            for k, v in local.items()}


def to_host(tree: Any) -> Any:
    """Global arrays -> numpy on every host (an all-gather across hosts when there are several)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)


def _threads() -> int:
    return max(1, min(MAX_LOAD_THREADS, os.cpu_count() or 1))


def run_batched(step: Callable[[dict], dict], load: Callable[[np.ndarray], dict], n: int, batch_size: int, mesh,
                *, progress: str | None = None) -> dict[str, np.ndarray]:
    """Runs ``step`` over all ``n`` examples and returns its per-example outputs in dataset order, plus ``valid``.

    ``load(indices)`` returns this host's rows for ``indices`` (-1 = padding) as numpy arrays, including
    ``valid`` (bool); ``index`` is added here. ``step(batch)`` maps global arrays to a dict of per-example
    outputs (leading axis = batch). The next batch loads while the device computes the current one.
    """
    from vlscale.runtime.progress import Progress

    total = num_batches(n, batch_size)
    outputs: list[dict] = []
    bar = Progress(n, desc=progress, unit="ex", enabled=bool(progress), plain_lines=False, leave=False)
    with concurrent.futures.ThreadPoolExecutor(1) as prefetch:
        def fetch(b):
            idx = host_indices(b, batch_size, n)
            rows = load(idx)
            rows["valid"] = np.asarray(rows["valid"], bool) & (idx >= 0)
            rows["index"] = idx.astype(np.int32)
            return rows

        pending = prefetch.submit(fetch, 0) if total else None
        for b in range(total):
            rows = pending.result()
            pending = prefetch.submit(fetch, b + 1) if b + 1 < total else None
            batch = to_global(rows, mesh)
            out = dict(step(batch))
            out["index"], out["valid"] = batch["index"], batch["valid"]
            outputs.append(out)
            bar.update(min(n, (b + 1) * batch_size))
    bar.close()
    if not outputs:
        return {}
    gathered = to_host(outputs)
    merged = {k: np.concatenate([o[k] for o in gathered]) for k in gathered[0]}
    keep = merged["index"] >= 0
    order = np.argsort(merged["index"][keep], kind="stable")
    return {k: v[keep][order] for k, v in merged.items()}


def map_examples(fn: Callable[[int], Any], indices: np.ndarray) -> list:
    """``fn(i)`` for every non-padding index (threads), ``None`` for padding."""
    real = [int(i) for i in indices if i >= 0]
    with concurrent.futures.ThreadPoolExecutor(_threads()) as pool:
        results = dict(zip(real, pool.map(fn, real)))
    return [results.get(int(i)) for i in indices]
