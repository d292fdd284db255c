"""Reading a ``configs.data`` ConfigDict: which host this is, its share of the global batch, a copy with fields replaced."""

from __future__ import annotations

import contextlib
import os

from vlscale.errors import UserError


def process_index_and_count(config) -> tuple[int, int]:
    """This host's index and the host count: from the config when set (tests, simulation), else from jax."""
    pi = config.get("process_index", None)
    pc = config.get("process_count", None)
    if pi is None or pc is None:
        import jax

        pi = jax.process_index() if pi is None else pi
        pc = jax.process_count() if pc is None else pc
    return int(pi), int(pc)


AUTO_WORKERS = -1  # data.worker_count: size the worker pool from this host (``worker_count``)
MAX_AUTO_WORKERS = 32


def host_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a SLURM or container limit counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_count(config, *, cores: int | None = None, local_devices: int | None = None,
                 platform: str | None = None) -> int:
    """Data worker processes for this host: ``data.worker_count`` when it is 0 or more; with -1 (the default),
    sized from the host. The main process keeps one core, plus one for the JAX runtime's host work; on a CPU
    backend half the cores compute the model, so the workers get the other half; at most 8 per local
    accelerator and 32 in all. On 2 cores or fewer: 0 (a worker would only take time from the training step).
    """
    n = int(config.worker_count)
    if n >= 0:
        return n
    if n != AUTO_WORKERS:
        raise UserError(f"data.worker_count={n}: give a number of worker processes (0 = none) or -1 for automatic")
    if cores is None:
        cores = host_cores()
    if local_devices is None or platform is None:
        import jax

        local_devices = jax.local_device_count() if local_devices is None else local_devices
        platform = jax.default_backend() if platform is None else platform
    if cores <= 2:
        return 0
    spare = cores // 2 if platform == "cpu" else cores - 2
    return max(0, min(spare, 8 * max(int(local_devices), 1), MAX_AUTO_WORKERS))


def per_host_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise UserError(
            f"global batch size {global_batch_size} does not split over {process_count} hosts; "
            "choose a multiple of the host count"
        )
    return global_batch_size // process_count


def with_overrides(config, **overrides):
    """A resolved copy of ``config`` (a ConfigDict or a mapping) with ``overrides`` set."""
    config = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") else dict(config)
    with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
        for k, v in overrides.items():
            config[k] = v
    return config
