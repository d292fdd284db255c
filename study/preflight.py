"""What a study checks when it is planned, before anything trains: every run's resolved training config, every
evaluation task and every fit benchmark against the tasks that produce them. Each problem is one line naming the
study-config field, so a typo fails `vlscale study plan` instead of every run after minutes of training.

Device-dependent checks (the mesh against the device count) wait for the machine that trains: here the mesh is
checked against the devices its explicit axes name.
"""

from __future__ import annotations

from pathlib import Path

from vlscale.errors import UserError


def check_study(cfg, plan) -> None:
    """Raises ``UserError`` for the first problem found (see module doc)."""
    check_train_configs(cfg, plan)
    tasks = check_eval_tasks(cfg)
    check_benchmarks(cfg, tasks)


def check_train_configs(cfg, plan) -> None:
    from vlscale.study.runner import build_train_config, run_identity
    from vlscale.train.validate import check_config

    bases = {}  # building a config field by field is slow (ml_collections): once per model and dataset
    for run in plan.runs:
        key = (run.model, run.dataset)
        if key not in bases:
            bases[key] = build_train_config(cfg, run, Path("."))  # unknown train.* / overrides fields: one line
            _check_synth_knobs(bases[key], run.dataset)
        tc = bases[key]
        with tc.ignore_type():
            tc.update(run_identity(run, Path(".")))
        mesh = [int(tc.mesh[a]) for a in ("data", "fsdp", "tensor")]
        devices = max(1, int(tc.mesh.get("devices", 0) or 0))
        for size in mesh:
            devices *= size if size > 0 else 1
        try:
            check_config(tc, device_count=devices, process_count=1)
        except UserError as e:
            raise UserError(f"study config, run {run.name}: {str(e).replace('--config.', 'train.')}") from None


def _check_synth_knobs(tc, dataset: str) -> None:
    if tc.data.source != "synth":
        return
    from vlscale.data.identity import synth_knobs

    try:
        synth_knobs(tc.data)
    except (TypeError, ValueError) as e:
        raise UserError(f"study config datasets.{dataset}: synthetic data knobs (train.data.synth.knobs or "
                        f"overrides.data.synth.knobs): {str(e).splitlines()[0]}") from None


def check_eval_tasks(cfg) -> list:
    from vlscale.eval.runner import as_task, check_task
    from vlscale.eval.suites import suite_tasks
    from vlscale.study.runner import eval_suite

    suite = eval_suite(cfg)
    try:
        tasks = suite_tasks(suite) if isinstance(suite, str) else [as_task(t) for t in suite]
        for t in tasks:
            check_task(t)
    except (UserError, TypeError) as e:  # TypeError: a task dict with a field TaskSpec does not have
        field = "eval.suite" if isinstance(suite, str) else "eval.tasks"
        raise UserError(f"study config {field}: {str(e).splitlines()[0].replace('--suite ', '')}") from None
    return tasks


def produced_benchmarks(tasks) -> list[str]:
    """``downstream_dataset/metric`` of every row the tasks write."""
    from vlscale.eval.runner import TASK_METRICS

    return [f"{t.downstream_dataset}/{m}" for t in tasks for m in TASK_METRICS[t.task]]


def check_benchmarks(cfg, tasks) -> None:
    produced = produced_benchmarks(tasks)
    missing = [b for b in cfg.fit.benchmarks if b not in produced]
    if missing:
        shown = ", ".join(produced[:12]) + (", ..." if len(produced) > 12 else "")
        raise UserError(f"study config fit.benchmarks: {', '.join(missing)} is not written by any evaluation task; "
                        f"the tasks write {shown}")
