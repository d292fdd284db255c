"""Reading a ``configs.data`` ConfigDict: which host this is, its share of the global batch, a copy with fields replaced."""

from __future__ import annotations

import contextlib

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
