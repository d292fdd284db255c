"""A run's identity and provenance: ``run.json``, the paper-style run name, and the resume check.

``run.json`` carries the results table's own column names (model, model_type, pretrain_dataset, lr_scheduler,
samples_seen, gflops_per_sample, global_batch_size, lr, warmup, seed), so the evaluator writes rows from it
without translation, plus the resolved config and where and how the run was computed.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from vlscale.configs.loading import flatten
from vlscale.configs.train import NON_IDENTITY_FIELDS
from vlscale.errors import UserError

RUN_JSON = "run.json"


def gflops_per_sample(model: str) -> float:
    """The paper's per-sample forward GFLOPs (model_profile.csv convention), unrounded so tiny models count."""
    from vlscale.models import flops

    return flops.forward_flops(model).paper / 1e9


def pretrain_dataset(config) -> str:
    if config.pretrain_dataset:
        return str(config.pretrain_dataset)
    return str(config.data.source)


def run_name(config) -> str:
    """e.g. ``mammut_tiny_s20000_synth_bs64_lr0.001_cosine_warmup50`` (the paper's naming, shortened)."""
    if config.run_name:
        return str(config.run_name)
    from vlscale.models.config import get_config

    family = get_config(config.model).family
    model = str(config.model)
    short = model[len(family) + 1:] if model.startswith(family + "_") else model.replace(f"-{family}", "")
    short = short.replace(f"{family}-", "")
    name = (f"{family}_{short}_s{int(config.total_samples)}_{pretrain_dataset(config)}_bs{int(config.global_batch_size)}"
            f"_lr{config.lr:g}_{config.schedule}_warmup{int(config.warmup)}")
    if config.schedule == "const-cooldown":
        name += f"_cooldown{int(config.cooldown_steps) or config.cooldown_fraction:g}"
    if int(config.seed):
        name += f"_seed{int(config.seed)}"
    return name


def identity(config) -> dict[str, Any]:
    """The config fields that define what a run computes (resuming with others changed is refused)."""
    flat = flatten(config.to_dict() if hasattr(config, "to_dict") else config)
    return {k: v for k, v in flat.items()
            if not any(k == f or k.startswith(f + ".") for f in NON_IDENTITY_FIELDS)}


def check_resume(workdir: Path, config) -> dict | None:
    """The existing run.json if the workdir holds a run; an error naming the fields that differ."""
    path = Path(workdir) / RUN_JSON
    if not path.exists():
        return None
    import json

    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable run.json ({e}); move the workdir aside or repair it")
    old = identity(saved.get("config", {}))
    new = identity(config)
    old_model = saved.get("model") or old.get("model")
    if old_model is not None and str(old_model) != str(config.model):
        # allow_config_change covers training settings; another architecture cannot load these checkpoints.
        raise UserError(f"workdir {workdir} holds a run of model {old_model}, not --config.model={config.model}: "
                        "its checkpoints cannot continue as another model; use another workdir")
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff and not config.allow_config_change:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
        more = f" (+{len(diff) - 6} more)" if len(diff) > 6 else ""
        raise UserError(f"workdir {workdir} holds a run with a different config: {shown}{more}; use another "
                        "workdir, or --config.allow_config_change=true to continue it anyway")
    return saved


def git_revision() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict[str, Any]:
    import flax
    import jax
    import jaxlib

    devices = jax.devices()
    return {
        "vlscale_git_revision": git_revision(),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
        "python": platform.python_version(), "host": platform.node(),
        "device_kind": devices[0].device_kind, "device_count": len(devices),
        "process_count": jax.process_count(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pid": os.getpid(),
    }


def build_run_json(config, *, total_steps: int, data_fingerprint: str | None) -> dict[str, Any]:
    from vlscale.models.config import get_config

    return {
        "run": run_name(config),
        "model": str(config.model),
        "model_type": get_config(config.model).family,
        "pretrain_dataset": pretrain_dataset(config),
        "lr_scheduler": str(config.schedule),
        "samples_seen": int(config.total_samples),
        "samples_seen_actual": int(total_steps * int(config.global_batch_size)),
        "total_steps": int(total_steps),
        "gflops_per_sample": gflops_per_sample(config.model),
        "global_batch_size": int(config.global_batch_size),
        "lr": float(config.lr),
        "warmup": int(config.warmup),
        "seed": int(config.seed),
        "init_from": str(config.init_from) or None,
        "data_fingerprint": data_fingerprint,
        "config": config.to_dict(),
        "provenance": provenance(),
        "wall_time_s": 0.0,
        "device_hours": 0.0,
    }
