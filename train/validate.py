"""Config checks that run before anything compiles: each problem is one line naming the field."""

from __future__ import annotations

import math

from vlscale.errors import UserError
from vlscale.train.budgets import budget_step
from vlscale.train.optim import SCHEDULE_CODES, cooldown_steps


# No run can see more: at 10^6 samples/s (about a thousand times the paper's largest runs' throughput) 10^15
# samples take 32 years; the paper's largest budget is 3e10.
MAX_TOTAL_SAMPLES = 10**15


def total_steps(config) -> int:
    return budget_step(int(config.total_samples), int(config.global_batch_size))


def check_config(config, *, device_count: int, process_count: int) -> None:
    import jax

    from vlscale.configs import train as train_config
    from vlscale.models.config import RuntimeOptions, get_config

    get_config(config.model)  # unknown model: one line with close names
    if not train_config.is_resolved(config):  # a config not yet through loop.resolve_config (study preflight)
        config = config.copy_and_resolve_references()
        train_config.resolve_runtime(config, jax.default_backend())
    RuntimeOptions(dtype=config.dtype, remat=config.remat, scan_layers=bool(config.scan_layers),
                   param_dtype=config.param_dtype, attention=config.attention)
    gbs = int(config.global_batch_size)
    for field in ("global_batch_size", "total_samples", "grad_accum", "log_every", "checkpoint_every"):
        if int(config[field]) < 1:
            raise UserError(f"--config.{field}={config[field]}: must be at least 1")
    if not float(config.total_samples) <= MAX_TOTAL_SAMPLES:
        raise UserError(f"--config.total_samples={config.total_samples}: more than {MAX_TOTAL_SAMPLES:.0e} samples "
                        "(over 30 years even at a million samples a second); the paper's largest run saw 3e10")
    if int(config.keep_checkpoints) < 1:
        raise UserError(f"--config.keep_checkpoints={config.keep_checkpoints}: must be at least 1")
    if float(config.lr) < 0 or not math.isfinite(float(config.lr)):
        raise UserError(f"--config.lr={config.lr}: must be a finite number >= 0")
    if int(config.warmup) < 0:
        raise UserError(f"--config.warmup={config.warmup}: must be >= 0 (or -1 for 5 % of the run)")
    if config.schedule not in SCHEDULE_CODES:
        raise UserError(f"--config.schedule={config.schedule!r}: use one of {', '.join(SCHEDULE_CODES)}")
    steps = total_steps(config)
    if int(config.warmup) >= steps:
        raise UserError(f"--config.warmup={config.warmup}: warm-up must be shorter than the run's {steps} steps "
                        f"(total_samples {config.total_samples} / global_batch_size {gbs})")
    if config.schedule == "const-cooldown":
        cool = cooldown_steps(config, steps)
        if cool < 1:
            raise UserError("--config.cooldown_steps: const-cooldown needs cooldown_steps >= 1 "
                            "(or cooldown_fraction > 0)")
        if cool > steps - int(config.warmup):
            raise UserError(f"--config.cooldown_steps={cool}: longer than the run after warm-up "
                            f"({steps - int(config.warmup)} steps)")
    if gbs % process_count:
        raise UserError(f"--config.global_batch_size={gbs}: not divisible by the {process_count} processes")
    accum = int(config.grad_accum)
    if gbs % accum:
        raise UserError(f"--config.grad_accum={accum}: global_batch_size {gbs} is not divisible by it")
    mesh = config.mesh
    if int(mesh.get("devices", 0)) and process_count > 1:
        raise UserError("--config.mesh.devices: only for a single process (a multi-host mesh spans every device)")
    if int(mesh.get("devices", 0)):
        if not 0 < int(mesh.devices) <= device_count:
            raise UserError(f"--config.mesh.devices={mesh.devices}: must be in [1, {device_count}] (0 = all)")
        device_count = int(mesh.devices)
    sizes = [int(mesh.data), int(mesh.fsdp), int(mesh.tensor)]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"--config.mesh: data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}: each axis is >= 1, "
                        "at most one is -1 (the rest of the devices)")
    known = math.prod(s for s in sizes if s != -1)
    if known > device_count or device_count % known:
        raise UserError(f"--config.mesh: data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]} needs "
                        f"{known} devices (or a divisor of the device count), have {device_count}")
    if -1 not in sizes and known != device_count:
        raise UserError(f"--config.mesh: data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]} uses {known} of "
                        f"{device_count} devices; set one axis to -1 to use the rest")
    resolved = [device_count // known if s == -1 else s for s in sizes]
    batch_axes = resolved[0] * resolved[1]
    if (gbs // accum) % batch_axes:
        raise UserError(f"--config.global_batch_size={gbs}: the micro-batch {gbs // accum} is not divisible by "
                        f"the batch mesh axes data x fsdp = {batch_axes}")
    if int(config.eval_every) < 0:
        raise UserError(f"--config.eval_every={config.eval_every}: must be >= 0 (0 = no in-training evaluation)")
    for m in config.checkpoint_at_samples:
        if int(m) <= 0 or int(m) > int(config.total_samples):
            raise UserError(f"--config.checkpoint_at_samples: {m} is outside (0, total_samples]")
    check_data_supply(config, process_count=process_count)


def _record_count(data) -> int | None:
    """Records in one epoch of a random-access training source; None for an endless synthetic stream."""
    if data.source == "synth":
        return int(data.in_memory_samples) if bool(data.get("in_memory", False)) else None
    if data.source == "folder":
        from vlscale.data.folder import FolderCaptionSource

        return len(FolderCaptionSource(**dict(data.folder)))
    if data.source == "tfds":
        from vlscale.data.tfds_source import TfdsCaptionSource

        return len(TfdsCaptionSource(**dict(data.tfds)))
    return None  # an unknown source is named by the data pipeline itself


def check_data_supply(config, *, process_count: int) -> None:
    """Finite training data (``data.num_epochs`` set) must last the run, decided before anything compiles.

    A random-access source (and the in-memory path) has a known length and is read in the global sample order
    (``data/global_order.py``): ``records × epochs`` samples in full global batches, the same count on every
    host, so the run needs ``steps`` of them. A webdataset stream's length is unknown until it is read, so a
    finite one is refused. Bad records are replaced by substitutes and do not shorten the stream; an in-memory
    set that dropped bad samples at load can still end early, and the trainer then stops with a checkpoint.
    """
    del process_count  # the global order gives every host the same number of batches
    data = config.data
    epochs = data.get("num_epochs", None)
    if epochs is None:
        return
    epochs = int(epochs)
    if epochs < 1:
        raise UserError(f"--config.data.num_epochs={epochs}: must be at least 1 (or None: repeat forever)")
    if data.source == "webdataset":
        raise UserError(f"--config.data.num_epochs={epochs}: the length of a webdataset stream is not known before "
                        "it is read, so training would stop wherever the shards end; set --config.data.num_epochs="
                        "None (repeat forever) and choose the run's length with --config.total_samples")
    records = _record_count(data)
    if records is None:
        return
    gbs, steps = int(config.global_batch_size), total_steps(config)
    batches = records * epochs // gbs
    if batches >= steps:
        return
    need = -(-steps * gbs // records)
    raise UserError(f"--config.data.num_epochs={epochs}: {records:,} {data.source} records give {batches:,} full "
                    f"batches of {gbs:,}, but --config.total_samples={int(config.total_samples):,} needs {steps:,}; "
                    f"raise data.num_epochs to {need}, lower total_samples, or set data.num_epochs=None "
                    "(repeat forever)")


