"""Where a study keeps things, and the small per-run state files the runner, status and collect share.

DIR/study.json                  the study config and its plan (written once; a different config is refused)
DIR/runs/<run>/                 the trainer's workdir (run.json, metrics.jsonl, checkpoints/, final.json)
DIR/runs/<run>/study_state.json this study's record of the run: status, error, train/eval seconds, host, pid
DIR/runs/<run>/results.csv      the evaluator's rows for the run
DIR/results.csv                 all runs' rows in plan order (rebuilt from the per-run files, so it does not
                                depend on where a study was interrupted)
DIR/report.md, report.html, figures/, fit.json, launch/

DIR may be a local folder or an object-store URL (``gs://bucket/study``): every path here comes from
``paths.resolve`` (a ``pathlib.Path`` or an ``etils.epath.Path``) and every write goes through ``runtime.files``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from vlscale.runtime import files, paths

STUDY_FILE = "study.json"
STATE_FILE = "study_state.json"
RESULTS_FILE = "results.csv"
ERROR_FILE = "study_error.txt"
# False on the non-zero processes of a multi-host job: one process writes the study's files.
WRITER = True


def study_path(study_dir) -> Path:
    """The study directory as a path to read and write: a local one made absolute (Orbax refuses relative
    checkpoint paths), an object-store URL as an epath."""
    p = paths.resolve(study_dir)
    return p.absolute() if paths.is_local(p) else p


def run_dir(study_dir: Path, name: str) -> Path:
    return paths.resolve(study_dir) / "runs" / name


def write_json(path: Path, obj) -> None:
    """Atomic: a study killed mid-write leaves the previous file, never half of one."""
    if not WRITER:
        return
    files.atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


def write_text(path: Path, text: str | bytes) -> None:
    if not WRITER:
        return
    files.atomic_write_bytes(path, text if isinstance(text, bytes) else text.encode("utf-8"))


def read_json(path: Path, default=None):
    try:
        return json.loads(paths.resolve(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def read_state(study_dir: Path, name: str) -> dict:
    return read_json(run_dir(study_dir, name) / STATE_FILE, {}) or {}


def update_state(study_dir: Path, name: str, **fields) -> dict:
    state = read_state(study_dir, name)
    state.update(fields)
    write_json(run_dir(study_dir, name) / STATE_FILE, state)
    return state


def is_trained(study_dir: Path, name: str) -> bool:
    return (run_dir(study_dir, name) / "final.json").is_file()


def here() -> dict:
    """Who is working on a run: shown by `study status`, used to tell a live run from one that was killed."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


def alive(owner: dict | None) -> bool:
    """Whether the process that marked a run as running still exists (only decidable on the same host)."""
    if not owner or owner.get("host") != socket.gethostname():
        return bool(owner)
    try:
        os.kill(int(owner["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return False
    return True
