"""`vlscale study status DIR`: done / running / interrupted / failed / pending per run, with times and progress."""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

from vlscale.runtime import paths
from vlscale.study import layout
from vlscale.study.plan import fmt_seconds

STATES = ("done", "trained", "running", "interrupted", "failed", "pending")


@dataclasses.dataclass
class Status:
    rows: list[dict]
    counts: collections.Counter

    def table(self) -> str:
        head = f"{'run':<58} {'status':<12} {'progress':>15} {'train':>7} {'eval':>6}  note"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r['run']:<58} {r['status']:<12} {r['progress']:>15} {fmt_seconds(r['train_s']):>7} "
                         f"{fmt_seconds(r['eval_s']):>6}  {r['note']}")
        lines.append(", ".join(f"{k} {self.counts[k]}" for k in STATES if self.counts[k]) +
                     f" (of {len(self.rows)})")
        return "\n".join(lines)


def _last_samples(workdir: Path) -> int | None:
    """Samples seen at the newest logged step (cheap: the tail of metrics.jsonl)."""
    p = workdir / "metrics.jsonl"
    if not p.is_file():
        return None
    with p.open("rb") as f:  # a local file or an object (epath): both seek
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 4096))
        tail = f.read().decode(errors="replace").strip().splitlines()
    for line in reversed(tail):
        try:
            return int(json.loads(line)["samples_seen"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


_LOG_NAME = re.compile(r"-stage(\d+)_(\d+)_(\d+)\.out$")  # launch.py's %x_%A_%a.out, %x = vlscale-STUDY-stageS


def job_logs(study_dir: Path) -> dict[str, tuple[str, Path]]:
    """Run name -> (SLURM job id ``A_a``, its log) for the runs a launched array task started; the newest log
    of a run when it was submitted more than once."""
    launch = paths.resolve(study_dir) / "launch"
    logs = launch / "logs"
    if not logs.is_dir():
        return {}
    names = {}
    for stage_file in launch.glob("runs_stage*.txt"):
        names[stage_file.stem.removeprefix("runs_stage")] = stage_file.read_text().split()
    found: dict[str, tuple[str, Path]] = {}
    for log in sorted(logs.glob("*.out"), key=lambda p: p.stat().st_mtime):
        m = _LOG_NAME.search(log.name)
        if not m or m.group(1) not in names or int(m.group(3)) >= len(names[m.group(1)]):
            continue
        found[names[m.group(1)][int(m.group(3))]] = (f"{m.group(2)}_{m.group(3)}", log)
    return found


def last_line(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 4096))
        lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "(empty log)"


def slurm_job_active(job: str) -> bool | None:
    """Whether SLURM still has the array task ``job`` queued or running; None when ``squeue`` cannot say."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "--noheader", "--jobs", job, "--format", "%T"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:  # squeue exits 1 for a job id it no longer knows
        return False if "Invalid job id" in out.stderr else None
    return bool(out.stdout.strip())


def run_status(study_dir: Path, run, logs: dict | None = None) -> dict:
    st = layout.read_state(study_dir, run.name)
    s = st.get("status", "pending")
    if s in ("running", "evaluating"):
        s = "running" if layout.alive(st.get("owner")) else "interrupted"
    if s == "pending" and layout.run_dir(study_dir, run.name).joinpath("checkpoints").is_dir():
        s = "interrupted"  # trained by a launched job that died before writing its state
    if s not in STATES:
        s = "interrupted"
    wd = layout.run_dir(study_dir, run.name)
    seen = run.samples if layout.is_trained(study_dir, run.name) else _last_samples(wd)
    progress = f"{seen or 0}/{run.samples}"
    note = st.get("error") or ""
    if s == "running":
        note = f"on {st['owner'].get('host')} pid {st['owner'].get('pid')}"
        if seen is None and st.get("status") == "running":
            progress = f"-/{run.samples}"
            note += "; no step logged yet (loading data or compiling)"
    job = (logs or {}).get(run.name)
    if job is not None and s in ("pending", "interrupted", "running"):
        # A launched job started this run: the scheduler and the job's log tell what the state files cannot (a job
        # that died before vlscale started, e.g. a missing executable, or was killed at its time limit).
        job_id, log = job
        active = slurm_job_active(job_id)
        if active is False:
            s = {"pending": "failed", "running": "interrupted"}.get(s, s)
            note = f"slurm job {job_id} ended: {last_line(log)} ({log})"
        elif active and s == "pending":
            s, note = "running", f"slurm job {job_id} started (log {log})"
        elif active is None and s == "pending":
            note = f"slurm job {job_id} wrote a log, squeue not available: {last_line(log)} ({log})"
    return {"run": run.name, "status": s, "progress": progress, "train_s": float(st.get("train_s", 0.0) or 0.0),
            "eval_s": float(st.get("eval_s", 0.0) or 0.0), "note": note}


def collect_status(study_dir: str | Path) -> Status:
    from vlscale.study.runner import load_study

    study_dir = layout.study_path(study_dir)
    _, plan = load_study(study_dir)
    logs = job_logs(study_dir)
    rows = [run_status(study_dir, r, logs) for r in plan.runs]
    return Status(rows, collections.Counter(r["status"] for r in rows))
