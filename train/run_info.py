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


def name_of(model: str, dataset: str, samples: int, bs: int, lr: float, warmup: int, schedule: str, seed: int = 0,
            from_samples: int | None = None) -> str:
    """The one run-name scheme (the paper's run identity: model, samples seen, data, batch, lr, warm-up, schedule),
    used by ``vlscale train`` and the study: ``ViT-B-32_s1280000000_datacomp_1b_bs90624_lr0.001_w3000_cosine``;
    a cooldown branched off a constant-LR run adds ``_from<samples>``, a non-zero seed ``_seed<n>``."""
    name = f"{model}_s{int(samples)}_{dataset}_bs{int(bs)}_lr{float(lr):g}_w{int(warmup)}_{schedule}"
    if from_samples is not None:
        name += f"_from{int(from_samples)}"
    return name + (f"_seed{int(seed)}" if int(seed) else "")


def run_name(config) -> str:
    """``config.run_name`` if set, else ``name_of`` the config's fields."""
    if config.run_name:
        return str(config.run_name)
    return name_of(str(config.model), pretrain_dataset(config), int(config.total_samples),
                   int(config.global_batch_size), float(config.lr), int(config.warmup), str(config.schedule),
                   int(config.seed))


def identity(config) -> dict[str, Any]:
    """The config fields that define what a run computes (resuming with others changed is refused)."""
    flat = flatten(config.to_dict() if hasattr(config, "to_dict") else config)
    return {k: v for k, v in flat.items()
            if not any(k == f or k.startswith(f + ".") for f in NON_IDENTITY_FIELDS)}


def check_resume(workdir: Path, config) -> dict | None:
    """The existing run.json if the workdir holds a run; an error naming the fields that differ."""
    from vlscale.runtime.paths import resolve

    path = resolve(workdir) / RUN_JSON
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


def attention_kernel(config) -> str:
    """The attention kernel ``config.attention`` runs as on this platform ("auto" resolved: cudnn | pallas | xla),
    "vision: ..., text: ..." where the towers' head widths make them differ."""
    from vlscale.models.attention import resolve_attention
    from vlscale.models.config import get_config

    cfg = get_config(config.model)
    kernel = {tower: resolve_attention(str(config.get("attention", "xla")), str(config.get("dtype", "float32")),
                                       head_dim=getattr(cfg, tower).head_width) for tower in ("vision", "text")}
    if kernel["vision"] == kernel["text"]:
        return kernel["vision"]
    return f"vision: {kernel['vision']}, text: {kernel['text']}"


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
        "attention_kernel": attention_kernel(config),
        "config": config.to_dict(),
        "provenance": provenance(),
        "wall_time_s": 0.0,
        "device_hours": 0.0,
    }
