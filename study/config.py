"""Loading and checking study configs (``configs/study/*.py``: a ``get_config()`` returning a ConfigDict)."""

from __future__ import annotations

import json

import ml_collections

from vlscale.configs import loading
from vlscale.errors import UserError

DEFAULT_STUDY = "tiny_shapes"
SCHEDULES = ("cosine", "const")
REQUIRED = ("name", "models", "samples_seen", "sweep", "schedule", "datasets", "eval", "fit")
SWEEP_KEYS = ("lr", "global_batch_size", "warmup")


def builtin_names() -> list[str]:
    return loading.builtin_names("study")


def load(spec: str | None = None) -> ml_collections.ConfigDict:
    """A study config from a path (``configs/study/tiny_shapes.py``) or a built-in name (``tiny_shapes``)."""
    cfg = loading.load_config(spec or DEFAULT_STUDY, builtin="study", what="study config")
    validate(cfg)
    return cfg


def from_dict(d: dict) -> ml_collections.ConfigDict:
    """The inverse of ``to_dict`` (the study directory's ``study.json`` holds the config)."""
    cfg = ml_collections.ConfigDict(d)
    validate(cfg)
    return cfg


def to_dict(cfg: ml_collections.ConfigDict) -> dict:
    return json.loads(json.dumps(cfg.to_dict(), default=list))


def validate(cfg: ml_collections.ConfigDict) -> None:
    """One-line errors for the mistakes a user makes when writing a study config."""
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise UserError(f"study config lacks {', '.join(missing)} (see configs/study/tiny_shapes.py)")
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"study schedule {cfg.schedule!r} is not one of {', '.join(SCHEDULES)}")
    if not len(cfg.models) or any(not len(v) for v in cfg.models.values()):
        raise UserError("study config: models must map each model type to a non-empty list of model names")
    budgets = list(cfg.samples_seen)
    if not budgets or any((not isinstance(b, int)) or b <= 0 for b in budgets):
        raise UserError(f"study config: samples_seen must be positive integers, got {budgets}")
    if sorted(set(budgets)) != budgets:
        raise UserError(f"study config: samples_seen must be increasing without repeats, got {budgets}")
    for k in SWEEP_KEYS:
        if k not in cfg.sweep or not len(cfg.sweep[k]):
            raise UserError(f"study config: sweep.{k} needs at least one value")
    if not len(cfg.datasets):
        raise UserError("study config: datasets needs at least one entry")
    from vlscale.models.config import get_config as model_config

    for names in cfg.models.values():
        for n in names:
            try:
                model_config(n)
            except Exception:
                raise UserError(f"study config: unknown model {n!r} (see `vlscale models`)") from None
    check_overrides(cfg)
    groups = list(cfg.fit.get("groups", []))
    if len(groups) != 2:
        raise UserError(f"study config: fit.groups must name two groups to compare, got {groups}")
    by = cfg.fit.get("group_by", "model_type")
    have = list(cfg.models.keys()) if by == "model_type" else list(cfg.datasets.keys())
    unknown = [g for g in groups if g not in have]
    if unknown:
        raise UserError(f"study config: fit.groups {unknown} are not among the study's {by}s ({', '.join(have)})")
    slurm = cfg.get("slurm", None)
    if slurm:
        from vlscale.study.launch import check_slurm_mem, check_slurm_time

        unknown = sorted(set(slurm.keys()) - {"time", "cpus_per_task", "mem"})
        if unknown:
            raise UserError(f"study config: slurm.{unknown[0]} is not a setting (time, cpus_per_task, mem)")
        if slurm.get("time"):
            check_slurm_time(slurm.time, "study config slurm.time")
        if slurm.get("mem"):
            check_slurm_mem(slurm.mem, "study config slurm.mem")
        cpus = slurm.get("cpus_per_task", 0)
        if not isinstance(cpus, int) or cpus < 0:
            raise UserError(f"study config: slurm.cpus_per_task={cpus!r} must be a whole number >= 1 (0: unset)")


def check_overrides(cfg: ml_collections.ConfigDict) -> None:
    """``train`` and every ``datasets.<name>.overrides`` name real training config fields (configs/train.py), and
    synthetic-data knobs build a valid generator: found at plan time, not when every run fails."""
    from vlscale.configs import train as train_config
    from vlscale.study.runner import _apply

    model = next(iter(next(iter(cfg.models.values()))))
    for name, ds in cfg.datasets.items():
        tc = train_config.get_config(f"model={model},data={ds.get('data', 'synth')}")
        _apply(tc, cfg.get("train", {}), "train.")
        _apply(tc, ds.get("overrides", {}), f"datasets.{name}.overrides.")
        if tc.data.source == "synth":
            from vlscale.data.synth_scene import SynthConfig

            try:
                SynthConfig.from_dict(tc.data.synth.knobs.to_dict())
            except (ValueError, TypeError) as e:
                raise UserError(f"study config: datasets.{name}: data.synth.knobs: {e}") from None
