"""``vlscale train --dry-run``: will this model, batch and mesh fit? Compile the real step, read XLA's numbers.

The step is lowered with the run's shardings on abstract inputs (no data, no parameters allocated) and
compiled; XLA's memory analysis gives the per-device argument, output and temporary bytes, and its cost analysis
the step's FLOPs. Parameters and optimizer state per device come from their shardings, next to their totals
divided by the device count; the share of parameter bytes the shardings leave (partly) replicated over the
model-parallel axes is printed, with a warning above ``REPLICATED_WARN_SHARE`` or when a device holds more than
``EVEN_SPLIT_WARN_RATIO`` times an even split.
"""

from __future__ import annotations

import math

import numpy as np


def _sharded_bytes(abstract_tree, shardings) -> int:
    import jax

    total = 0
    for a, s in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
        shard = s.shard_shape(a.shape)
        total += int(np.prod(shard, dtype=np.int64)) * np.dtype(a.dtype).itemsize
    return total


def _total_bytes(abstract_tree) -> int:
    import jax

    return sum(int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize
               for a in jax.tree.leaves(abstract_tree))


def _gib(n: float) -> str:
    return f"{n / 2**30:.3f} GiB"


# --dry-run warns when more than this share of the parameter bytes is not split over every model-parallel device.
REPLICATED_WARN_SHARE = 0.10
# ... or when the parameters per device exceed an even split over those devices by more than this factor (at high
# device counts a small replicated share already dominates what each device holds).
EVEN_SPLIT_WARN_RATIO = 1.5


def analyse(config) -> dict:
    import jax

    from vlscale.train import optim, step as step_lib, validate
    from vlscale.runtime import sharding
    from vlscale.train.loop import mesh_devices, resolve_config

    config = resolve_config(config)
    validate.check_config(config, device_count=jax.device_count(), process_count=jax.process_count())
    m = config.mesh
    mesh = sharding.make_mesh(int(m.data), int(m.fsdp), int(m.tensor), devices=mesh_devices(m))
    image_dtype = str(config.data.get("image_dtype", "float32"))
    trainer = step_lib.get_train_step(config, mesh, image_dtype=image_dtype)
    cfg = trainer.config
    gbs = int(config.global_batch_size)
    batch = {
        "image": jax.ShapeDtypeStruct((gbs, cfg.image_size, cfg.image_size, 3), np.dtype(image_dtype),
                                      sharding=trainer.batch_shardings["image"]),
        "text": jax.ShapeDtypeStruct((gbs, cfg.context_length), np.int32, sharding=trainer.batch_shardings["text"]),
    }
    sched = optim.schedule_params(config, validate.total_steps(config))
    compiled = trainer.lower(batch, sched).compile()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    abstract = trainer.abstract_state
    from vlscale.models import registry

    replication = sharding.replication(registry.param_logical_axes(trainer.model), abstract.params, mesh)
    out = {
        "model": str(config.model), "global_batch_size": gbs, "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind, "mesh": dict(mesh.shape),
        "params_bytes_per_device": _sharded_bytes(abstract.params, trainer.state_shardings.params),
        "opt_state_bytes_per_device": _sharded_bytes(abstract.opt_state, trainer.state_shardings.opt_state),
        "params_bytes": _total_bytes(abstract.params), "opt_state_bytes": _total_bytes(abstract.opt_state),
        "replicated_share": replication["replicated_share"], "replicated_arrays": replication["arrays"],
        "model_parallel_devices": replication["model_parallel_devices"],
        "argument_bytes": getattr(mem, "argument_size_in_bytes", None) if mem else None,
        "output_bytes": getattr(mem, "output_size_in_bytes", None) if mem else None,
        "temp_bytes": getattr(mem, "temp_size_in_bytes", None) if mem else None,
        "generated_code_bytes": getattr(mem, "generated_code_size_in_bytes", None) if mem else None,
        "step_flops_per_device": float(cost.get("flops", math.nan)) if cost else math.nan,
    }
    from vlscale.models import flops

    out["paper_train_flops_per_step"] = flops.training_flops(config.model, batch_size=gbs)
    out["runtime"] = runtime_summary(config)
    return out


def runtime_summary(config) -> dict:
    """The resolved runtime fields of a config (after ``loop.resolve_config``) and which of them were defaults."""
    return {"dtype": str(config.dtype), "param_dtype": str(config.param_dtype), "remat": str(config.remat),
            "scan_layers": bool(config.scan_layers), "attention": str(config.attention),
            "auto_fields": [f for f in str(config.get("auto_fields", "")).split(",") if f]}


def runtime_line(runtime: dict) -> str:
    auto = ", ".join(runtime["auto_fields"]) or "none"
    return (f"  runtime           dtype {runtime['dtype']}, param_dtype {runtime['param_dtype']} (master weights "
            f"and Adam moments float32), remat {runtime['remat']}, scan_layers {runtime['scan_layers']}, "
            f"attention {runtime['attention']}; model/platform defaults filled: {auto}")


def dry_run(config) -> str:
    a = analyse(config)
    temp = a["temp_bytes"]
    total = sum(v for v in (a["argument_bytes"], a["output_bytes"], temp) if v)
    n = a["devices"]
    ways = a["model_parallel_devices"]
    arrays = a["replicated_arrays"]
    lines = [
        f"dry run: {a['model']}, global batch {a['global_batch_size']}, {n} x {a['device_kind']}, "
        f"mesh {a['mesh']}",
        runtime_line(a["runtime"]),
        f"  parameters        {_gib(a['params_bytes_per_device'])} per device, {a['params_bytes_per_device']} bytes "
        f"({_gib(a['params_bytes'])} in all, {a['params_bytes']} bytes; / {n} devices = {_gib(a['params_bytes'] / n)})",
        f"  optimizer state   {_gib(a['opt_state_bytes_per_device'])} per device, {a['opt_state_bytes_per_device']} "
        f"bytes ({_gib(a['opt_state_bytes'])} in all, {a['opt_state_bytes']} bytes; / {n} devices = "
        f"{_gib(a['opt_state_bytes'] / n)})",
        f"  replicated        {100 * a['replicated_share']:.1f} % of parameter bytes are split fewer than the "
        f"{ways} ways of the model-parallel axes (fsdp x tensor); {len(arrays)} arrays"
        + (f", largest {arrays[0][0]} {arrays[0][1]} in {arrays[0][2]} part(s)" if arrays else ""),
        f"  activations/temp  {_gib(temp) if temp is not None else 'n/a'} per device (XLA memory analysis)",
        f"  step total        {_gib(total)} per device (arguments + outputs + temporaries; donated buffers "
        "counted once in arguments)",
        f"  step FLOPs        {a['step_flops_per_device']:.3e} per device (XLA), "
        f"{a['paper_train_flops_per_step']:.3e} in all (paper convention, forward x 3)",
    ]
    even = a["params_bytes"] / ways  # the parameters split evenly over the model-parallel devices
    ratio = a["params_bytes_per_device"] / even if even else 1.0
    if ways > 1 and (a["replicated_share"] > REPLICATED_WARN_SHARE or ratio > EVEN_SPLIT_WARN_RATIO):
        lost = sorted({ax for *_, axes in arrays for ax in axes})
        lines.append(f"warning: parameters per device are {ratio:.1f} x an even split over the {ways} model-parallel "
                     f"devices; {100 * a['replicated_share']:.1f} % of their bytes stay (partly) replicated"
                     + (f" (mesh axes {', '.join(lost)} divide none of some arrays' dimensions)" if lost else "")
                     + "; pick fsdp/tensor sizes that divide the model's widths, or put the remaining devices on "
                     "mesh.data")
    return "\n".join(lines)
