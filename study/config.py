"""Loading and checking study configs (``configs/study/*.py``: a ``get_config()`` returning a ConfigDict)."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import ml_collections

from vlscale.errors import UserError

DEFAULT_STUDY = "tiny_shapes"
SCHEDULES = ("cosine", "const")
REQUIRED = ("name", "models", "samples_seen", "sweep", "schedule", "datasets", "eval", "fit")
SWEEP_KEYS = ("lr", "global_batch_size", "warmup")


def _from_file(path: Path) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(f"_vlscale_study_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise UserError(f"study config {path} is not a Python file")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "get_config"):
        raise UserError(f"study config {path} has no get_config() function")
    return mod.get_config()


def builtin_names() -> list[str]:
    folder = Path(__file__).resolve().parents[1] / "configs" / "study"
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def load(spec: str | None = None) -> ml_collections.ConfigDict:
    """A study config from a path (``configs/study/tiny_shapes.py``) or a built-in name (``tiny_shapes``)."""
    spec = spec or DEFAULT_STUDY
    path = Path(spec)
    if path.suffix == ".py" or path.exists():
        if not path.is_file():
            raise UserError(f"study config {spec} does not exist (built-in: {', '.join(builtin_names())})")
        cfg = _from_file(path)
    else:
        try:
            mod = importlib.import_module(f"vlscale.configs.study.{spec}")
        except ModuleNotFoundError:
            raise UserError(f"unknown study config {spec!r}; pass a .py path or one of: "
                            f"{', '.join(builtin_names())}") from None
        cfg = mod.get_config()
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
