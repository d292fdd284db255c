"""`vlscale study`: plan, run, status, launch and collect a scaling-law study (docs/study.md).

Only argparse at import time; the handlers import the study modules (and through them JAX) when they run.
"""

from __future__ import annotations

import argparse
import sys

from vlscale.commands import argtypes


DESCRIPTION = """\
Plan a grid of model scales x samples seen (x a hyper-parameter sweep), train every run, evaluate every checkpoint
the protocol needs, fit the scaling laws, compare the groups and write DIR/report.md (+ report.html, figures/).

  vlscale study --config configs/study/tiny_shapes.py --dir runs/demo    # plan, then run it all here
  vlscale study plan --config configs/study/paper_clip_mammut.py         # runs, GFLOPs, est. time and disk
  vlscale study status runs/demo                                         # done / running / failed / pending
  vlscale study launch --config F --dir DIR --backend slurm              # scripts under DIR/launch/ (no submit)
  vlscale study collect DIR                                              # evaluate what is missing, fit, report

Re-running the same command resumes: finished runs and evaluations are skipped, interrupted runs continue from
their checkpoints. The exit code is 1 when a run failed (the report lists it), 2 for bad input.
"""


def _common(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    d = argparse.SUPPRESS if suppress else None
    p.add_argument("--config", default=d, metavar="F",
                   help="study config: a .py with get_config() or a built-in name (default: tiny_shapes, or the "
                        "config recorded in DIR)")
    p.add_argument("--dir", default=d, metavar="DIR",
                   help="study directory: a local folder or gs://BUCKET/PATH (plan, run, status and collect; launch "
                        "needs a local or shared folder) (default: runs/<study name>)")


def _run_options(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    d = argparse.SUPPRESS
    p.add_argument("--only", action="append", default=d if suppress else None, metavar="RUN",
                   help="train/evaluate only this run (repeatable; what launched jobs use)")
    p.add_argument("--no-eval", action="store_true", default=d if suppress else False,
                   help="train only (evaluation is left to `study collect`)")
    p.add_argument("--no-report", action="store_true", default=d if suppress else False,
                   help="do not fit or write the report")
    p.add_argument("--distributed", action="store_true", default=d if suppress else False,
                   help="start jax.distributed first (multi-host jobs under SLURM or on a TPU VM)")


def configure(p: argparse.ArgumentParser) -> None:
    _common(p, suppress=False)
    _run_options(p, suppress=False)
    sub = p.add_subparsers(dest="study_command", metavar="<subcommand>")
    fmt = argparse.RawDescriptionHelpFormatter

    sp = sub.add_parser("plan", help="print the plan: every run with its GFLOPs, estimated time and disk",
                        formatter_class=fmt)
    _common(sp, suppress=True)
    sp.add_argument("--json", action="store_true", help="the plan as JSON lines, one run a line")
    sp.set_defaults(_handler=handle_plan)

    sr = sub.add_parser("run", help="plan, train, evaluate, fit and report (the default)", formatter_class=fmt)
    _common(sr, suppress=True)
    _run_options(sr, suppress=True)
    sr.set_defaults(_handler=handle_run)

    ss = sub.add_parser("status", help="done / running / interrupted / failed / pending per run, with times")
    ss.add_argument("study_dir", metavar="DIR")
    ss.set_defaults(_handler=handle_status)

    sl = sub.add_parser("launch", help="write one job per run for a cluster scheduler under DIR/launch/",
                        formatter_class=fmt)
    _common(sl, suppress=True)
    sl.add_argument("--backend", default="print", choices=("print", "slurm", "tpu-vm"),
                    help="print: plain `vlscale train` lines; slurm: sbatch arrays; tpu-vm: gcloud ssh lines")
    sl.add_argument("--submit", action="store_true", help="submit (slurm: run submit.sh; tpu-vm: run_tpu.sh)")
    sl.add_argument("--repo", default="", help="checkout path on the cluster (jobs cd there first)")
    sl.add_argument("--vlscale", default="", metavar="CMD",
                    help="how jobs call the CLI (slurm default: the absolute path of the vlscale running now, so jobs "
                         "need no activated virtualenv; print/tpu-vm default: vlscale)")
    sl.add_argument("--partition", default="", help="slurm partition")
    sl.add_argument("--account", default="", help="slurm account")
    sl.add_argument("--nodes", type=argtypes.positive_int, default=1, help="slurm: nodes per run (multi-host trainer)")
    sl.add_argument("--gpus-per-node", type=argtypes.nonnegative_int, default=0, help="slurm: GPUs per node")
    sl.add_argument("--time", default="", help="slurm time limit per job, e.g. 12:00:00 or 2-00:00:00 (default: the "
                    "study config's slurm.time, else 24:00:00)")
    sl.add_argument("--cpus-per-task", type=argtypes.positive_int, default=0,
                    help="slurm: CPU cores per task (default: the study config's slurm.cpus_per_task, else unset)")
    sl.add_argument("--mem", default="", help="slurm: memory per node, e.g. 64G (default: the study config's "
                    "slurm.mem, else unset)")
    sl.add_argument("--tpu-name", default="", help="tpu-vm: the TPU VM's name")
    sl.add_argument("--zone", default="", help="tpu-vm: its zone")
    sl.add_argument("--project", default="", help="tpu-vm: its project")
    sl.set_defaults(_handler=handle_launch)

    sc = sub.add_parser("collect", help="evaluate the checkpoints still missing, fit, compare and report")
    sc.add_argument("study_dir", metavar="DIR")
    sc.set_defaults(_handler=handle_collect)


def register(registry) -> None:
    registry.add("study", "plan, train, evaluate, fit, compare and report a scaling-law study", configure,
                 handle_run, description=DESCRIPTION)


# ------------------------------------------------------------------------------------------------ handlers
def _resolve(args, *, need_dir: bool = True):
    """(config, study dir): --config, else the config recorded in --dir, else the built-in default."""
    from pathlib import Path

    from vlscale.runtime.paths import resolve
    from vlscale.study import config as study_config
    from vlscale.study import layout, runner

    spec = getattr(args, "config", None)
    d = getattr(args, "dir", None)
    if spec is None and d is not None and (resolve(d) / layout.STUDY_FILE).is_file():
        cfg, _ = runner.load_study(d)
    else:
        cfg = study_config.load(spec)
    return cfg, resolve(d) if d else Path("runs") / str(cfg.name)


def handle_plan(args) -> int:
    import json

    from vlscale.study.plan import make_plan

    from vlscale.study import timing
    from vlscale.study.preflight import check_study

    cfg, study_dir = _resolve(args)
    plan = make_plan(cfg, timing.calibrated(cfg, make_plan(cfg), study_dir))  # measured runs in --dir, if any
    check_study(cfg, plan)
    if args.json:
        for r in plan.runs:
            print(json.dumps(r.row()))
    else:
        print(plan.table())
    return 0


def _distributed() -> None:
    from vlscale.study import layout
    from vlscale.runtime import distributed

    distributed.initialize()
    import jax

    layout.WRITER = jax.process_index() == 0


def handle_run(args) -> int:
    from vlscale.study import runner
    from vlscale.study.plan import make_plan

    if getattr(args, "distributed", False):
        _distributed()
    from vlscale.study import timing

    from vlscale.study.preflight import check_study

    cfg, study_dir = _resolve(args)
    only = getattr(args, "only", None)
    plan = make_plan(cfg, timing.calibrated(cfg, make_plan(cfg), study_dir))
    check_study(cfg, plan)  # before the lock creates the study directory: a bad config leaves nothing behind
    if not only:
        print(plan.table(), flush=True)
        print(f"study directory: {study_dir}", flush=True)
    # A whole study is one writer of its directory; `--only RUN` jobs (study launch) run side by side, each
    # holding its run's workdir lock in training.
    with _study_lock(study_dir, "vlscale study run") if not only else _no_lock():
        out = runner.run_study(cfg, study_dir, only=only, do_eval=not getattr(args, "no_eval", False),
                               report=not getattr(args, "no_report", False),
                               progress=lambda s: print(s, flush=True))
    if out.failed:
        print(f"{len(out.failed)} run(s) failed: {', '.join(out.failed)}", file=sys.stderr)
    return out.exit_code


def _study_lock(study_dir, command: str, flag: str = "--dir"):
    """The study directory's writer lock (process 0 of a multi-host study holds it for all). On object storage it
    is a lock object created only if absent (runtime/locks.py); creating it is the check that DIR can be written."""
    from pathlib import Path

    from vlscale.runtime import locks
    from vlscale.study import layout

    if not layout.WRITER:
        return _no_lock()
    from vlscale.runtime import files

    if not files.is_remote(study_dir):
        files.check_output_dir(study_dir, flag=flag)  # a file or an unwritable parent: one line naming --dir
        Path(study_dir).mkdir(parents=True, exist_ok=True)
    return locks.exclusive(study_dir, flag=flag, command=command, object_store=True)


def _no_lock():
    import contextlib

    return contextlib.nullcontext()


def handle_status(args) -> int:
    from vlscale.study import status

    st = status.collect_status(args.study_dir)
    print(st.table())
    return 1 if st.counts["failed"] else 0


def handle_launch(args) -> int:
    from vlscale.study import launch, runner

    opts = launch.LaunchOptions(backend=args.backend, repo=args.repo, vlscale=args.vlscale, partition=args.partition,
                                account=args.account, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                                time=args.time, cpus_per_task=args.cpus_per_task, mem=args.mem,
                                tpu_name=args.tpu_name, zone=args.zone, project=args.project, submit=args.submit)
    launch.check_options(opts)
    cfg, study_dir = _resolve(args)
    from vlscale.runtime import files

    if files.is_remote(study_dir):
        from vlscale.errors import UserError

        raise UserError(f"--dir {study_dir}: study launch writes job scripts and logs that the scheduler reads from a "
                        "file system; give a local or shared folder (`vlscale study run --dir gs://...` works)")
    plan = runner.open_study(cfg, study_dir)
    for line in launch.launch(cfg, plan, study_dir, opts):
        print(line)
    return 0


def handle_collect(args) -> int:
    from vlscale.study import runner, status

    cfg, _ = runner.load_study(args.study_dir)
    with _study_lock(args.study_dir, "vlscale study collect", flag="study directory"):
        out = runner.run_study(cfg, args.study_dir, do_train=False, progress=lambda s: print(s, flush=True))
    st = status.collect_status(args.study_dir)
    print(st.table())
    return out.exit_code
