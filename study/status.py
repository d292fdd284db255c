"""`vlscale study status DIR`: done / running / interrupted / failed / pending per run, with times and progress."""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path

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
    with open(p, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 4096))
        tail = f.read().decode(errors="replace").strip().splitlines()
    for line in reversed(tail):
        try:
            return int(json.loads(line)["samples_seen"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def run_status(study_dir: Path, run) -> dict:
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
    return {"run": run.name, "status": s, "progress": progress, "train_s": float(st.get("train_s", 0.0) or 0.0),
            "eval_s": float(st.get("eval_s", 0.0) or 0.0), "note": note}


def collect_status(study_dir: str | Path) -> Status:
    from vlscale.study.runner import load_study

    study_dir = Path(study_dir)
    _, plan = load_study(study_dir)
    rows = [run_status(study_dir, r) for r in plan.runs]
    return Status(rows, collections.Counter(r["status"] for r in rows))
