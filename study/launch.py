"""`vlscale study launch`: one job per planned run on an existing scheduler, written under DIR/launch/.

Backends:
* ``print``: one plain ``vlscale train ...`` command line per run on stdout (paste them into any scheduler), then
  ``vlscale study collect DIR``.
* ``slurm``: ``stage0.sbatch`` (an array, one task per independent run; each task runs the multi-host trainer
  over ``srun`` with jax.distributed), ``stage1.sbatch`` (the cooldowns, ``--dependency=afterok`` on stage 0),
  ``collect.sbatch`` (evaluation, fits, report; ``afterany`` so failures are reported) and ``submit.sh``.
* ``tpu-vm``: ``run_tpu.sh`` with one ``gcloud compute tpus tpu-vm ssh NAME --worker=all --command ...`` line per
  run, stage 0 before stage 1, then collect on worker 0.

Every job writes into the shared study directory and follows the local runner's resume rules (finished runs are
skipped, interrupted ones continue from their checkpoints), so submitting again is safe. Nothing is submitted
unless ``submit=True``. There is no scheduler, queue or RPC of our own.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from vlscale.errors import UserError
from vlscale.study import layout
from vlscale.study.plan import Plan

BACKENDS = ("print", "slurm", "tpu-vm")
DEFAULT_TIME = "24:00:00"
# sbatch's --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; --mem: a whole number with an optional K/M/G/T unit.
_TIME = re.compile(r"^(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2})$")
_MEM = re.compile(r"^\d+[KMGT]?$")


def current_vlscale() -> str:
    """The command that runs this very vlscale in a job that inherits no virtualenv: the ``vlscale`` script beside
    the running interpreter (a venv's bin/), else ``<absolute interpreter> -m vlscale``."""
    exe = Path(os.path.abspath(sys.executable))
    script = exe.with_name("vlscale")
    if script.is_file() and os.access(script, os.X_OK):
        return shlex.quote(str(script))
    return f"{shlex.quote(str(exe))} -m vlscale"


def check_slurm_time(text: str, where: str = "--time") -> str:
    if not _TIME.match(str(text).strip()):
        raise UserError(f"{where} {text!r}: use a SLURM time limit such as 90 (minutes), 12:00:00 or 2-00:00:00")
    return str(text).strip()


def check_slurm_mem(text: str, where: str = "--mem") -> str:
    if not _MEM.match(str(text).strip().upper()):
        raise UserError(f"{where} {text!r}: use a SLURM memory size such as 64G or 500M")
    return str(text).strip().upper()


def resolve_options(cfg, opts: LaunchOptions) -> LaunchOptions:
    """Flags over the study config's ``slurm`` section over the defaults; the CLI command made explicit."""
    conf = (cfg.get("slurm", None) if cfg is not None else None) or {}
    time = opts.time or str(conf.get("time", "") or "") or DEFAULT_TIME
    cpus = int(opts.cpus_per_task or conf.get("cpus_per_task", 0) or 0)
    mem = opts.mem or str(conf.get("mem", "") or "")
    return dataclasses.replace(
        opts, vlscale=opts.vlscale or (current_vlscale() if opts.backend == "slurm" else "vlscale"),
        time=check_slurm_time(time, "--time" if opts.time else "study config slurm.time"),
        cpus_per_task=cpus, mem=check_slurm_mem(mem, "--mem" if opts.mem else "study config slurm.mem") if mem else "")


@dataclasses.dataclass
class LaunchOptions:
    backend: str = "print"
    repo: str = ""  # checkout on the cluster (cd there first); "" = the current directory
    vlscale: str = ""  # how jobs invoke the CLI; "" = the vlscale running now (``current_vlscale``)
    partition: str = ""
    account: str = ""
    nodes: int = 1
    gpus_per_node: int = 0
    time: str = ""  # "" = the study config's slurm.time, else DEFAULT_TIME
    cpus_per_task: int = 0  # 0 = the study config's slurm.cpus_per_task, else the scheduler's default
    mem: str = ""  # "" = the study config's slurm.mem, else the scheduler's default
    tpu_name: str = ""
    zone: str = ""
    project: str = ""
    submit: bool = False


def _q(x) -> str:
    return shlex.quote(str(x))


def _config_value(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v) if v else "[]"
    return str(v)


def train_command(cfg, run, study_dir: Path, vlscale: str = "vlscale") -> str:
    """The plain ``vlscale train`` line of a run: its config spec plus every field that differs from the default."""
    from vlscale.configs import train as train_config
    from vlscale.configs.loading import flatten
    from vlscale.study.runner import build_train_config

    ds = cfg.datasets[run.dataset]
    spec = f"configs/train.py:model={run.model},data={ds.get('data', 'synth')}"
    base = flatten(train_config.get_config(f"model={run.model},data={ds.get('data', 'synth')}"))
    full = flatten(build_train_config(cfg, run, study_dir))
    parts = [vlscale, "train", "--config", _q(spec), "--workdir", _q(layout.run_dir(study_dir, run.name))]
    for k, v in full.items():
        if base.get(k) != v:
            parts.append(_q(f"--config.{k}={_config_value(v)}"))
    return " ".join(parts)


def _study_run(opts: LaunchOptions, study_dir: Path, run_expr: str, distributed: bool = True) -> str:
    """A run's job: it trains the run and then evaluates its checkpoints on the same hosts (all processes of the
    job, under ``jax.distributed``), so evaluation runs in parallel across runs instead of in one serial tail."""
    return (f"{opts.vlscale} study run --dir {_q(study_dir)} --only {run_expr} --no-report"
            + (" --distributed" if distributed else ""))


def _cd(opts: LaunchOptions) -> str:
    return f"cd {_q(opts.repo)}\n" if opts.repo else ""


def _sbatch_header(opts: LaunchOptions, name: str, logs: Path, array: int | None, nodes: int) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --nodes={nodes}", "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --time={opts.time}"]
    if opts.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={opts.cpus_per_task}")
    if opts.mem:
        lines.append(f"#SBATCH --mem={opts.mem}")
    if array is not None:
        lines.append(f"#SBATCH --array=0-{array - 1}")
        lines.append(f"#SBATCH --output={logs}/%x_%A_%a.out")
    else:
        lines.append(f"#SBATCH --output={logs}/%x_%j.out")
    if opts.partition:
        lines.append(f"#SBATCH --partition={opts.partition}")
    if opts.account:
        lines.append(f"#SBATCH --account={opts.account}")
    if opts.gpus_per_node and nodes:
        lines.append(f"#SBATCH --gpus-per-node={opts.gpus_per_node}")
    return lines + ["set -euo pipefail"]


def write_slurm(cfg, plan: Plan, study_dir: Path, opts: LaunchOptions) -> list[Path]:
    out = study_dir / "launch"
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    files = []
    stages = [s for s in (0, 1) if plan.stage(s)]
    for s in stages:
        names = [r.name for r in plan.stage(s)]
        lst = out / f"runs_stage{s}.txt"
        layout.write_text(lst, "\n".join(names) + "\n")
        body = _sbatch_header(opts, f"vlscale-{plan.name}-stage{s}", logs, len(names), opts.nodes)
        body += [_cd(opts).rstrip("\n")] if opts.repo else []
        body += [f'RUN=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {_q(lst)})',
                 "# one task per node; jax.distributed reads the SLURM environment",
                 f'srun --ntasks-per-node=1 {_study_run(opts, study_dir, chr(34) + "$RUN" + chr(34))}']
        p = out / f"stage{s}.sbatch"
        layout.write_text(p, "\n".join(body) + "\n")
        files += [lst, p]
    body = _sbatch_header(opts, f"vlscale-{plan.name}-collect", logs, None, 1)
    body += [_cd(opts).rstrip("\n")] if opts.repo else []
    body += ["# the run jobs evaluated their own checkpoints: this evaluates only what they left (a failed or",
             "# interrupted evaluation), then fits, compares and writes the report",
             f"{opts.vlscale} study collect {_q(study_dir)}"]
    p = out / "collect.sbatch"
    layout.write_text(p, "\n".join(body) + "\n")
    files.append(p)
    sub = ["#!/bin/bash", "# Submits the study: stage 0, then the runs that start from its checkpoints, then collect.",
           "set -euo pipefail", 'cd "$(dirname "$0")"', "J0=$(sbatch --parsable stage0.sbatch)", 'echo "stage 0: $J0"']
    last = "J0"
    if 1 in stages:
        sub += ["J1=$(sbatch --parsable --dependency=afterok:${J0} stage1.sbatch)", 'echo "stage 1: $J1"']
        last = "J1"
    sub += [f"JC=$(sbatch --parsable --dependency=afterany:${{{last}}} collect.sbatch)",
            'echo "collect: $JC"']
    p = out / "submit.sh"
    layout.write_text(p, "\n".join(sub) + "\n")
    os.chmod(p, 0o755)
    return files + [p]


def write_tpu(cfg, plan: Plan, study_dir: Path, opts: LaunchOptions) -> list[Path]:
    out = study_dir / "launch"
    out.mkdir(parents=True, exist_ok=True)
    ssh = f"gcloud compute tpus tpu-vm ssh {_q(opts.tpu_name)} --zone {_q(opts.zone)}"
    if opts.project:
        ssh += f" --project {_q(opts.project)}"
    cd = f"cd {opts.repo} && " if opts.repo else ""
    lines = ["#!/bin/bash",
             "# One command per run on every worker of the TPU VM (jax.distributed finds the TPU topology);",
             "# stage 1 (cooldowns) only after stage 0. A failed run is recorded and the rest go on.",
             "set -uo pipefail", "failed=0"]
    for s in (0, 1):
        if not plan.stage(s):
            continue
        lines.append(f"# stage {s}")
        for r in plan.stage(s):
            cmd = cd + _study_run(opts, study_dir, _q(r.name))
            lines.append(f"{ssh} --worker=all --command {_q(cmd)} || failed=1")
    lines += ["# each run's command above also evaluated its checkpoints on every worker (jax.distributed);",
              "# worker 0 evaluates what is left, fits and writes the report",
              f"{ssh} --worker=0 --command {_q(cd + f'{opts.vlscale} study collect {_q(study_dir)}')} || failed=1",
              'exit "$failed"']
    p = out / "run_tpu.sh"
    layout.write_text(p, "\n".join(lines) + "\n")
    os.chmod(p, 0o755)
    return [p]


def print_commands(cfg, plan: Plan, study_dir: Path, opts: LaunchOptions) -> list[str]:
    lines = [f"# study {plan.name}: {len(plan.runs)} runs; stage-1 runs start from stage-0 checkpoints"]
    for s in (0, 1):
        if plan.stage(s):
            lines.append(f"# stage {s}")
            lines += [train_command(cfg, r, study_dir, opts.vlscale) for r in plan.stage(s)]
    lines += ["# then: evaluate, fit, compare, report", f"{opts.vlscale} study collect {_q(study_dir)}"]
    layout.write_text(study_dir / "launch" / "commands.sh", "\n".join(lines) + "\n")
    return lines


def check_options(opts: LaunchOptions) -> None:
    """Option mistakes, caught before anything is written to the study directory."""
    if opts.backend not in BACKENDS:
        raise UserError(f"--backend {opts.backend!r}: choose one of {', '.join(BACKENDS)}")
    if opts.backend == "print" and opts.submit:
        raise UserError("--submit needs --backend slurm or tpu-vm (print only prints)")
    if opts.backend == "tpu-vm" and (not opts.tpu_name or not opts.zone):
        raise UserError("--backend tpu-vm needs --tpu-name and --zone (an existing TPU VM)")
    if opts.time:
        check_slurm_time(opts.time)
    if opts.mem:
        check_slurm_mem(opts.mem)
    if opts.cpus_per_task < 0:
        raise UserError(f"--cpus-per-task {opts.cpus_per_task}: must be at least 1")


def launch(cfg, plan: Plan, study_dir: str | Path, opts: LaunchOptions) -> list[str]:
    """Writes the backend's scripts; returns the lines to print. Submits only with ``opts.submit``."""
    study_dir = Path(study_dir).resolve()
    check_options(opts)
    opts = resolve_options(cfg, opts)
    if opts.backend == "print":
        return print_commands(cfg, plan, study_dir, opts)
    files = (write_slurm if opts.backend == "slurm" else write_tpu)(cfg, plan, study_dir, opts)
    entry = files[-1]
    lines = [f"wrote {p}" for p in files]
    if not opts.submit:
        lines.append(f"not submitted; run {entry} (or pass --submit)")
        return lines
    proc = subprocess.run(["bash", str(entry)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"{entry} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return lines + proc.stdout.strip().splitlines()
