"""A study config -> the list of runs it needs, each with its identity, compute, estimated time and disk.

Pure: no I/O, no JAX. The order of ``Plan.runs`` is the order the local runner trains them in (stage 0 first; a
stage-1 run starts from a stage-0 run's checkpoint), and the identity of a run is its name, so a re-run of the same
study finds its finished runs by name.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

from vlscale.errors import UserError
from vlscale.train.run_info import name_of as run_name  # the one run-name scheme (also vlscale train's)
from vlscale.runtime.resources import format_bytes
from vlscale.train.budgets import budget_step, milestone_steps

# Bytes a kept checkpoint holds per parameter: float32 params plus AdamW's two float32 moments (cooldowns resume
# the optimizer, so milestones keep its state).
CHECKPOINT_BYTES_PER_PARAM = 12


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    model: str
    model_type: str
    dataset: str  # pretrain_dataset name written to the results table
    schedule: str  # cosine | const | const-cooldown
    samples: int  # total samples seen at the end of the run
    lr: float
    global_batch_size: int
    warmup: int  # steps
    seed: int
    checkpoint_at_samples: tuple[int, ...]  # const: one kept milestone per budget
    init_from: str | None  # const-cooldown: "<run name>@<step>"
    cooldown_steps: int
    stage: int  # 0: independent; 1: starts from a stage-0 checkpoint
    budgets: tuple[int, ...]  # the samples-seen values this run contributes points at
    gflops_per_sample: float  # the paper's convention (forward, image + text towers)
    train_gflops_per_sample: float  # forward + backward, incl. attention products
    params: int
    est_train_s: float
    est_eval_s: float
    disk_bytes: int

    @property
    def steps(self) -> int:
        return budget_step(self.samples, self.global_batch_size)

    @property
    def trained_samples(self) -> int:
        """Samples this run itself trains on (a cooldown starts from its parent's checkpoint)."""
        if self.init_from is None:
            return self.samples
        return self.cooldown_steps * self.global_batch_size

    @property
    def compute_gflops(self) -> float:
        return self.gflops_per_sample * self.samples

    @property
    def depends_on(self) -> str | None:
        return self.init_from.split("@")[0] if self.init_from else None

    def row(self) -> dict:
        return {"run": self.name, "model": self.model, "model_type": self.model_type, "dataset": self.dataset,
                "schedule": self.schedule, "samples": self.samples, "lr": self.lr,
                "global_batch_size": self.global_batch_size, "warmup": self.warmup, "seed": self.seed,
                "stage": self.stage, "budgets": list(self.budgets), "init_from": self.init_from,
                "gflops": self.compute_gflops, "est_s": self.est_train_s + self.est_eval_s,
                "disk_bytes": self.disk_bytes}


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    runs: tuple[Run, ...]
    compile_s: float  # start-up (compilation) per distinct (model, batch), in its first run's estimate
    time_source: str = "config estimate"  # where the time model's numbers come from (study/timing.py)

    def run(self, name: str) -> Run:
        for r in self.runs:
            if r.name == name:
                return r
        raise UserError(f"no run named {name!r} in study {self.name} (see `vlscale study plan`)")

    @property
    def total_gflops(self) -> float:
        return sum(r.trained_samples * r.gflops_per_sample for r in self.runs)

    @property
    def total_est_s(self) -> float:
        """Every run's estimate (each (model, batch) shape's start-up is in its first run's)."""
        return sum(r.est_train_s + r.est_eval_s for r in self.runs)

    @property
    def total_disk_bytes(self) -> int:
        return sum(r.disk_bytes for r in self.runs)

    def stage(self, k: int) -> list[Run]:
        return [r for r in self.runs if r.stage == k]

    def table(self) -> str:
        """The plan as the text `vlscale study plan` prints."""
        lines = [f"study {self.name}: {len(self.runs)} runs"]
        head = f"{'run':<58} {'samples':>11} {'GFLOPs':>9} {'est.':>7} {'disk':>9}"
        lines += [head, "-" * len(head)]
        for r in self.runs:
            lines.append(f"{r.name:<58} {r.samples:>11.4g} {r.compute_gflops:>9.3g} "
                         f"{fmt_seconds(r.est_train_s + r.est_eval_s):>7} {format_bytes(r.disk_bytes):>9}")
        n_shapes = len({(r.model, r.global_batch_size) for r in self.runs})
        lines.append(f"total: {self.total_gflops:.3g} GFLOPs trained (paper convention), estimated "
                     f"{fmt_seconds(self.total_est_s)} incl. {n_shapes} compilations ({self.time_source}), disk "
                     f"{format_bytes(self.total_disk_bytes)}")
        return "\n".join(lines)


def fmt_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.1f}m"
    if s < 2 * 86400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"




def _get(d, key, default=None):
    """ConfigDict/dict lookup that tolerates missing keys and non-string keys written as strings."""
    if d is None:
        return default
    for k in (key, str(key)):
        if k in d:
            return d[k]
    return default


def sweep_points(cfg, model: str, samples: int | None) -> list[tuple[float, int, int]]:
    """(lr, global batch, warm-up) combinations for a cell: per-model values over per-budget over the default."""
    out = {}
    for k in ("lr", "global_batch_size", "warmup"):
        vals, where = cfg.sweep[k], f"sweep.{k}"
        by_samples = _get(_get(cfg, "sweep_per_samples"), samples)
        if by_samples is not None and k in by_samples:
            vals, where = by_samples[k], f"sweep_per_samples[{samples}].{k}"
        by_model = _get(_get(cfg, "sweep_per_model"), model)
        if by_model is not None and k in by_model:
            vals, where = by_model[k], f"sweep_per_model[{model!r}].{k}"
        out[k] = [_sweep_value(k, v, where) for v in vals]
    return list(itertools.product(out["lr"], out["global_batch_size"], out["warmup"]))


def _sweep_value(key: str, value, where: str):
    """A swept value as the plan uses it, or a one-line error naming the field (0 batches, NaN rates, ...)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if key == "lr":
        if not 0 <= number < math.inf:
            raise UserError(f"study config: {where} has {value!r}; a learning rate is a finite number >= 0")
        return number
    least = 1 if key == "global_batch_size" else 0
    if not (least <= number < math.inf and number == int(number)):
        raise UserError(f"study config: {where} has {value!r}; each value must be a whole number >= {least}")
    return int(number)


def _replicate_seeds(cfg, model: str, budgets) -> list[int]:
    rep = _get(cfg, "replicates")
    base = int(_get(cfg, "seed", 0))
    if rep is None or int(_get(rep, "count", 1)) <= 1:
        return [base]
    models = list(_get(rep, "models", []) or [])
    samples = list(_get(rep, "samples_seen", []) or [])
    if (models and model not in models) or (samples and not set(samples) & set(budgets)):
        return [base]
    return [base + i for i in range(int(rep.count))]


def _model_info(model: str) -> tuple[str, float, float, int]:
    from vlscale.models import flops
    from vlscale.models.config import get_config

    fam = get_config(model).family
    fwd = flops.forward_flops(model)
    train = flops.training_flops(model) / 1e9
    return fam, fwd.paper / 1e9, train, flops.param_counts(model)["total"]


def make_plan(cfg, time_model=None) -> Plan:
    """Every run of the study (see module doc). Raises UserError for grids that cannot be trained. Times come
    from ``time_model`` (``study.timing``; default: the config's ``estimate``)."""
    from vlscale.study import timing

    tm = time_model or timing.from_config(cfg)
    rate, eval_s = tm.train_gflops_per_s, tm.eval_s
    caps = _get(cfg, "max_samples_seen", {}) or {}
    frac = float(_get(cfg, "cooldown_fraction", 0.0) or 0.0)
    runs: list[Run] = []
    for model_type, models in cfg.models.items():
        for model in models:
            family, gps, train_gps, params = _model_info(model)
            if family != model_type and cfg.fit.get("group_by", "model_type") == "model_type":
                raise UserError(f"study config: {model} is a {family} model, listed under {model_type}")
            cap = _get(caps, model)
            budgets = [b for b in cfg.samples_seen if cap is None or b <= int(cap)]
            if not budgets:
                raise UserError(f"study config: no samples_seen budget is within max_samples_seen of {model}")
            ckpt_bytes = params * CHECKPOINT_BYTES_PER_PARAM
            for dataset in cfg.datasets.keys():
                if cfg.schedule == "cosine":
                    cells = [(b, (b,)) for b in budgets]
                else:
                    cells = [(budgets[-1], tuple(budgets))]
                for total, cell_budgets in cells:
                    for lr, bs, warmup in sweep_points(cfg, model, total if cfg.schedule == "cosine" else None):
                        steps = budget_step(total, bs)
                        first_steps = budget_step(cell_budgets[0], bs)
                        if warmup >= steps:
                            raise UserError(f"study config: {model} at {total} samples has {steps} steps of batch "
                                            f"{bs}, not more than its warm-up of {warmup}; lower warmup or batch")
                        if cfg.schedule == "const" and warmup >= first_steps:
                            raise UserError(f"study config: the first budget {cell_budgets[0]} is {first_steps} "
                                            f"steps of batch {bs}, still in the warm-up of {warmup} steps")
                        if cfg.schedule == "const":
                            _check_milestones(model, cell_budgets, bs)
                        for seed in _replicate_seeds(cfg, model, cell_budgets):
                            name = run_name(model, dataset, total, bs, lr, warmup, cfg.schedule, seed)
                            kept = len(cell_budgets) if cfg.schedule == "const" else 1  # const: evaluated milestones
                            runs.append(Run(
                                name=name, model=model, model_type=family, dataset=dataset, schedule=cfg.schedule,
                                samples=total, lr=lr, global_batch_size=bs, warmup=warmup, seed=seed,
                                checkpoint_at_samples=tuple(cell_budgets) if cfg.schedule == "const" else (),
                                init_from=None, cooldown_steps=0, stage=0, budgets=tuple(cell_budgets),
                                gflops_per_sample=gps, train_gflops_per_sample=train_gps, params=params,
                                est_train_s=train_gps * total / rate,
                                est_eval_s=eval_s * len(cell_budgets), disk_bytes=kept * ckpt_bytes))
                            if cfg.schedule == "const" and frac > 0:
                                runs.extend(_cooldowns(runs[-1], frac, rate, eval_s, ckpt_bytes))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise UserError(f"study config gives two runs the same identity ({dup[0]}); a model is listed twice?")
    runs.sort(key=lambda r: r.stage)  # stable: stage 0 in config order, then the cooldowns
    shapes, timed = set(), []
    for r in runs:  # one time model for every estimate: the plan's and the runner's progress line
        first = (r.model, r.global_batch_size) not in shapes
        shapes.add((r.model, r.global_batch_size))
        timed.append(dataclasses.replace(r, est_train_s=tm.train_s(r, first_of_shape=first),
                                         est_eval_s=tm.eval_total_s(r)))
    plan = Plan(str(cfg.name), tuple(timed), tm.startup_s, tm.source)
    check_cooldowns(plan)
    return plan


def _cooldowns(parent: Run, frac: float, rate: float, eval_s: float, ckpt_bytes: int) -> list[Run]:
    """Short linear cooldowns from each kept budget of a const run (the paper's const-cooldown protocol)."""
    out = []
    bs = parent.global_batch_size
    for b in parent.budgets:
        start_step = budget_step(b, bs)  # the milestone the trainer keeps for budget b
        cd_steps = max(1, math.ceil(frac * b / bs))
        total = (start_step + cd_steps) * bs
        name = run_name(parent.model, parent.dataset, total, bs, parent.lr, parent.warmup, "const-cooldown",
                        parent.seed, from_samples=b)
        out.append(dataclasses.replace(
            parent, name=name, schedule="const-cooldown", samples=total, checkpoint_at_samples=(),
            init_from=f"{parent.name}@{start_step}", cooldown_steps=cd_steps, stage=1, budgets=(total,),
            est_train_s=parent.train_gflops_per_sample * cd_steps * bs / rate, est_eval_s=eval_s,
            disk_bytes=ckpt_bytes))
    return out


def _check_milestones(model: str, budgets, bs: int) -> None:
    """Each budget of a const run is a distinct kept step (what its evaluations and cooldowns start from)."""
    steps = [budget_step(b, bs) for b in budgets]
    if len(milestone_steps(budgets, bs)) != len(steps):
        clash = sorted({(a, b) for a, b in zip(budgets, budgets[1:]) if budget_step(a, bs) == budget_step(b, bs)})
        a, b = clash[0]
        raise UserError(f"study config: {model} at global batch {bs}: budgets {a} and {b} end at the same step "
                        f"{budget_step(a, bs)}; drop one or lower the batch")


def check_cooldowns(plan: Plan) -> None:
    """Every cooldown starts from a step its parent keeps (the trainer's milestones); raises UserError if not."""
    for r in plan.runs:
        if r.init_from is None:
            continue
        parent_name, step = r.init_from.rsplit("@", 1)
        parent = plan.run(parent_name)
        kept = milestone_steps(parent.checkpoint_at_samples, parent.global_batch_size)
        if int(step) not in kept:
            raise UserError(f"study config: cooldown {r.name} starts from step {step} of {parent_name}, which keeps "
                            f"steps {kept} only")
