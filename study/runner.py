"""Runs a study's plan on this machine, one run after another, resumably.

For each run in plan order: train it (or continue it from its last checkpoint) unless it has ``final.json``,
evaluate the checkpoints the protocol needs unless its state says it was evaluated, and record the outcome in
``runs/<run>/study_state.json``. A failure is recorded with its error and the study goes on; a run that starts from
a failed run's checkpoint fails too, saying why. ``DIR/results.csv`` is rebuilt from the per-run tables in plan
order, so an interrupted-and-resumed study writes the same file as an uninterrupted one.

The trainer and evaluator are injected (``train_fn``, ``eval_fn``) and default to ``vlscale.train.run`` and
``vlscale.eval.evaluate_run``; tests pass small fakes that honour the same contract.
"""

from __future__ import annotations

import dataclasses
import io
import math
import shutil
import time
import traceback
from pathlib import Path
from typing import Callable

import ml_collections

from vlscale.runtime import csv_cells, paths
from vlscale.errors import UserError
from vlscale.study import config as study_config
from vlscale.study import layout, timing
from vlscale.study.plan import Plan, Run, fmt_seconds, make_plan

# The fields of a study config that change what is trained or evaluated; a study directory refuses a config that
# differs in any of them (fit and report settings may change between re-runs).
RUN_FIELDS = ("models", "samples_seen", "max_samples_seen", "sweep", "sweep_per_model", "sweep_per_samples",
              "schedule", "cooldown_fraction", "seed", "replicates", "datasets", "train", "eval")


@dataclasses.dataclass
class Outcome:
    statuses: dict[str, str]  # run -> done | failed | pending | interrupted
    seconds: float

    @property
    def failed(self) -> list[str]:
        return [r for r, s in self.statuses.items() if s == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


# ------------------------------------------------------------------------------------------------ the study dir
def open_study(cfg: ml_collections.ConfigDict, study_dir: str | Path) -> Plan:
    """Writes (or checks) DIR/study.json and returns the plan."""
    from vlscale.study.preflight import check_study

    study_dir = layout.study_path(study_dir)
    plan = make_plan(cfg)
    check_study(cfg, plan)  # every run's config, task and benchmark, before anything is written or trained
    path = study_dir / layout.STUDY_FILE
    new = study_config.to_dict(cfg)
    old = layout.read_json(path)
    if old is not None:
        before = old.get("config", {})
        changed = [k for k in RUN_FIELDS if before.get(k) != new.get(k)]
        if changed:
            raise UserError(f"{study_dir} holds study {before.get('name')!r} with different {', '.join(changed)}; "
                            "pass the same config to resume it, or a new --dir")
    layout.write_json(path, {"config": new, "plan": [r.row() for r in plan.runs]})
    return plan


def load_study(study_dir: str | Path) -> tuple[ml_collections.ConfigDict, Plan]:
    """The config and plan recorded in DIR/study.json (for status, collect and launched jobs)."""
    data = layout.read_json(layout.study_path(study_dir) / layout.STUDY_FILE)
    if data is None:
        raise UserError(f"{study_dir} is not a study directory (no {layout.STUDY_FILE}); run "
                        "`vlscale study run --config F --dir DIR` or `vlscale study launch` first")
    cfg = study_config.from_dict(data["config"])
    return cfg, make_plan(cfg)


# ------------------------------------------------------------------------------------------------ train config
# Open mappings of the training config: any field of the class they configure may be added (configs/data.py).
OPEN_FIELDS = {"data.synth.knobs.": "vlscale.data.synth.SynthConfig"}


def _apply(target: ml_collections.ConfigDict, overrides, where: str) -> None:
    for key, value in dict(overrides).items():
        if key not in target:
            import difflib

            close = difflib.get_close_matches(str(key), list(target.keys()), n=1)
            hint = f"; did you mean {' or '.join(where + c for c in close)}?" if close else ""
            raise UserError(f"study config: {where}{key} is not a training config field (configs/train.py){hint}")
        if isinstance(target[key], ml_collections.ConfigDict) and isinstance(value, (dict, ml_collections.ConfigDict)):
            _apply(target[key], value, f"{where}{key}.")
        else:
            with target.ignore_type():
                target[key] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def init_path(study_dir: Path, run: Run) -> str | None:
    if run.init_from is None:
        return None
    parent, step = run.init_from.split("@")
    return str(layout.run_dir(study_dir, parent) / "checkpoints" / step)


def build_train_config(cfg: ml_collections.ConfigDict, run: Run, study_dir: Path) -> ml_collections.ConfigDict:
    """The run's ``configs/train.py`` config: the study's train overrides, the dataset's, then the run identity."""
    from vlscale.configs import train as train_config

    ds = cfg.datasets[run.dataset]
    tc = train_config.get_config(f"model={run.model},data={ds.get('data', 'synth')}")
    _apply(tc, cfg.get("train", {}), "train.")
    _apply(tc, ds.get("overrides", {}), f"datasets.{run.dataset}.overrides.")
    _apply(tc, run_identity(run, study_dir), "")
    return tc


def run_identity(run: Run, study_dir: Path) -> dict:
    """The training-config fields that make a run this run (the rest comes from the study's train settings)."""
    return {
        "global_batch_size": run.global_batch_size, "total_samples": run.samples, "lr": run.lr,
        "warmup": run.warmup, "schedule": run.schedule, "cooldown_steps": run.cooldown_steps,
        "init_from": init_path(study_dir, run) or "", "seed": run.seed,
        "checkpoint_at_samples": list(run.checkpoint_at_samples), "pretrain_dataset": run.dataset,
        "run_name": run.name,
    }


# ------------------------------------------------------------------------------------------------ defaults
def default_train_fn():
    """The trainer composed with the in-training evaluator its config asks for (``eval_every``)."""
    from vlscale.eval.in_training import evaluator
    from vlscale.train.loop import run

    def train(config, workdir, **kwargs):
        return run(config, workdir, evaluate=evaluator(config), **kwargs)

    return train


def default_eval_fn():
    try:
        from vlscale.eval import evaluate_run
    except ImportError:
        raise UserError("this installation has no evaluator (vlscale.eval.evaluate_run); update the checkout") from None
    return evaluate_run


def eval_suite(cfg):
    """The suite name, or ``eval.tasks`` (a list of task dicts, e.g. with fewer examples) when the config has it."""
    tasks = cfg.eval.get("tasks", None)
    if tasks:
        return [dict(t) for t in tasks]
    return cfg.eval.suite


# ------------------------------------------------------------------------------------------------ one run
def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip().splitlines()[0][:400]


def _fail(study_dir: Path, run: Run, stage: str, e: BaseException | str, progress) -> str:
    msg = e if isinstance(e, str) else _error_text(e)
    if not isinstance(e, str):
        layout.write_text(layout.run_dir(study_dir, run.name) / layout.ERROR_FILE,
                          "".join(traceback.format_exception(type(e), e, e.__traceback__)))
    layout.update_state(study_dir, run.name, status="failed", failed_in=stage, error=msg, owner=None)
    progress(f"  {run.name}: FAILED in {stage}: {msg}")
    return "failed"


def _prune(workdir: Path) -> None:
    """Removes all checkpoints but the newest (after evaluation, when the config keeps only final ones)."""
    ckpts = workdir / "checkpoints"
    if not ckpts.is_dir():
        return
    steps = sorted((p for p in ckpts.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    for p in steps[:-1]:
        if paths.is_local(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.rmtree()  # an object-store prefix (epath)


def run_one(cfg, plan: Plan, run: Run, study_dir: Path, *, train_fn, eval_fn, config_fn, do_train: bool = True,
            do_eval: bool = True, progress: Callable[[str], None] = print) -> str:
    """Trains and evaluates one run as far as asked; returns its status."""
    workdir = layout.run_dir(study_dir, run.name)
    workdir.mkdir(parents=True, exist_ok=True)
    state = layout.read_state(study_dir, run.name)
    if state.get("status") == "done" and layout.is_trained(study_dir, run.name):
        return "done"
    if run.depends_on and not layout.is_trained(study_dir, run.depends_on):
        if not do_train:
            return "pending"
        return _fail(study_dir, run, "train", f"its parent run {run.depends_on} did not finish", progress)
    if not layout.is_trained(study_dir, run.name):
        if not do_train:
            return "pending"
        resumed = (workdir / "checkpoints").is_dir()
        progress(f"  {run.name}: {'resuming' if resumed else 'training'} ({run.samples} samples, "
                 f"batch {run.global_batch_size}, est. {fmt_seconds(run.est_train_s)} training + "
                 f"{fmt_seconds(run.est_eval_s)} evaluation)")
        layout.update_state(study_dir, run.name, status="running", owner=layout.here(), error=None)
        t0 = time.perf_counter()
        try:
            out = train_fn(config_fn(cfg, run, study_dir), str(workdir))
        except KeyboardInterrupt:
            layout.update_state(study_dir, run.name, status="interrupted", owner=None,
                                train_s=state.get("train_s", 0.0) + time.perf_counter() - t0)
            raise
        except Exception as e:  # noqa: BLE001 - a failed run is recorded and the study goes on
            layout.update_state(study_dir, run.name, train_s=state.get("train_s", 0.0) + time.perf_counter() - t0)
            return _fail(study_dir, run, "train", e, progress)
        state = layout.update_state(study_dir, run.name, train_s=state.get("train_s", 0.0) + time.perf_counter() - t0)
        if isinstance(out, dict) and out.get("finished") is False or not layout.is_trained(study_dir, run.name):
            layout.update_state(study_dir, run.name, status="interrupted", owner=None)
            return "interrupted"
    if not do_eval:
        layout.update_state(study_dir, run.name, status="trained", owner=None)
        return "trained"
    progress(f"  {run.name}: evaluating ({cfg.eval.suite})")
    layout.update_state(study_dir, run.name, status="evaluating", owner=layout.here())
    t0 = time.perf_counter()
    try:
        eval_fn(str(workdir), eval_suite(cfg), results=str(workdir / layout.RESULTS_FILE))
    except KeyboardInterrupt:
        layout.update_state(study_dir, run.name, status="interrupted", owner=None)
        raise
    except Exception as e:  # noqa: BLE001
        return _fail(study_dir, run, "eval", e, progress)
    state = layout.read_state(study_dir, run.name)
    layout.update_state(study_dir, run.name, status="done", owner=None, error=None, failed_in=None,
                        eval_s=state.get("eval_s", 0.0) + time.perf_counter() - t0)
    dependents = [r for r in plan.runs if r.depends_on == run.name]
    if cfg.get("keep_checkpoints", "all") == "final" and not dependents:
        _prune(workdir)
    return "done"


# ------------------------------------------------------------------------------------------------ results
def collect_results(plan: Plan, study_dir: str | Path):
    """DIR/results.csv from the per-run tables, in plan order (rows within a run sorted by step and task)."""
    import pandas as pd

    study_dir = layout.study_path(study_dir)
    frames = []
    for r in plan.runs:
        p = layout.run_dir(study_dir, r.name) / layout.RESULTS_FILE
        text = p.read_text(encoding="utf-8") if p.is_file() else ""
        if text:
            df = csv_cells.restore_frame(pd.read_csv(io.StringIO(text)))
            keys = [k for k in ("step", "samples_seen", "downstream_dataset", "metric") if k in df.columns]
            frames.append(df.sort_values(keys, kind="stable") if keys else df)
    out = study_dir / layout.RESULTS_FILE
    if not frames:
        return None
    table = pd.concat(frames, ignore_index=True)
    layout.write_text(out, csv_cells.neutralise_frame(table).to_csv(index=False))
    return table


# ------------------------------------------------------------------------------------------------ the study
def run_study(cfg, study_dir: str | Path, *, train_fn=None, eval_fn=None, config_fn=None, only=None,
              do_train: bool = True, do_eval: bool = True, report: bool = True,
              progress: Callable[[str], None] = print) -> Outcome:
    """Plans, trains, evaluates, collects and reports (see module doc)."""
    study_dir = layout.study_path(study_dir)  # absolute when local: Orbax refuses relative checkpoint paths
    t0 = time.perf_counter()
    plan = open_study(cfg, study_dir)
    runs = list(plan.runs) if not only else [plan.run(n) for n in only]
    train_fn = train_fn or (default_train_fn() if do_train else None)
    eval_fn = eval_fn or (default_eval_fn() if do_eval else None)
    config_fn = config_fn or build_train_config
    statuses = {}
    for i, r in enumerate(runs):
        # the same time model as the plan's, recalibrated from the runs this machine has finished so far
        timed = make_plan(cfg, timing.calibrated(cfg, plan, study_dir))
        left = [timed.run(x.name) for x in runs[i:] if not layout.is_trained(study_dir, x.name)]
        eta = f"; about {fmt_seconds(sum(x.est_train_s + x.est_eval_s for x in left))} left ({timed.time_source})" \
            if left and do_train else ""
        progress(f"[{i + 1}/{len(runs)}] {r.name}{eta}")
        statuses[r.name] = run_one(cfg, plan, timed.run(r.name), study_dir, train_fn=train_fn, eval_fn=eval_fn,
                                   config_fn=config_fn, do_train=do_train, do_eval=do_eval, progress=progress)
    if do_eval:
        collect_results(plan, study_dir)
    outcome = Outcome(statuses, time.perf_counter() - t0)
    if report and do_eval and not only:
        from vlscale.study import report as report_lib

        path = report_lib.write_report(cfg, plan, study_dir, wall_s=outcome.seconds, progress=progress)
        progress(f"study {cfg.name}: {sum(s == 'done' for s in statuses.values())}/{len(statuses)} runs done "
                 f"in {fmt_seconds(time.perf_counter() - t0)}; report: {path}")
    return outcome


def est_total(plan: Plan) -> float:
    return math.fsum(r.est_train_s + r.est_eval_s for r in plan.runs)
