"""Evaluation rows in the fitter's schema (``vlscale.scaling.results``) and an idempotent, atomic CSV append.

One row per (checkpoint, downstream dataset, metric). The checkpoint's identity comes from the trainer's
``run.json`` (the same names: ``pretrain_dataset``, ``lr_scheduler``, ``model_type``, ``model``, ``samples_seen``,
``gflops_per_sample``, ``lr``, ``global_batch_size``, ``warmup``, ``run``) and the checkpoint (``step`` and its own
samples seen). The run's final checkpoint is written at the run's nominal ``samples_seen`` (its target) with the
samples it really saw as ``samples_seen_actual``; an intermediate checkpoint (the constant-LR protocol) is written
at its own samples seen in both. ``compute_gflops = gflops_per_sample * samples_seen`` and likewise ``_actual``.

Appending holds a lock, skips rows whose identity columns (``IDENTITY_COLUMNS``) are already in the table, and
replaces the file in one step (temp file + ``os.replace``), so re-running adds nothing and a killed evaluation
never leaves a torn table.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

from vlscale.errors import UserError
from vlscale.scaling.results import IDENTITY_COLUMNS, NUMERIC_COLUMNS, OPTIONAL_COLUMNS, REQUIRED_COLUMNS

COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
IDENTITY_FLAGS = ("pretrain_dataset", "lr_scheduler", "samples_seen")


def checkpoint_identity(ckpt, identity: Mapping | None = None) -> dict | None:
    """The identity columns of a checkpoint's rows, or None when unknown (a converted checkpoint without flags)."""
    from vlscale.models.config import get_config

    family = get_config(ckpt.model_name).family
    run = ckpt.run
    if run is not None:
        gps = float(run["gflops_per_sample"])
        actual = int(ckpt.samples_seen) if ckpt.samples_seen is not None else int(run["samples_seen"])
        nominal = int(run["samples_seen"]) if ckpt.final else actual
        ident = {"pretrain_dataset": run["pretrain_dataset"], "lr_scheduler": run["lr_scheduler"],
                 "model_type": run.get("model_type", family), "model": ckpt.model_name, "samples_seen": nominal,
                 "gflops_per_sample": gps, "compute_gflops": gps * nominal, "samples_seen_actual": actual,
                 "compute_gflops_actual": gps * actual, "lr": run.get("lr"),
                 "global_batch_size": run.get("global_batch_size"), "warmup": run.get("warmup"),
                 "run": run.get("run", ""), "step": ckpt.step}
        if identity:
            ident.update({k: v for k, v in identity.items() if v is not None})
        return ident
    if not identity or any(identity.get(k) in (None, "") for k in IDENTITY_FLAGS):
        return None
    from vlscale.models.flops import gflops

    samples = int(float(identity["samples_seen"]))
    gps = float(identity.get("gflops_per_sample") or gflops(ckpt.model_name))
    return {"pretrain_dataset": identity["pretrain_dataset"], "lr_scheduler": identity["lr_scheduler"],
            "model_type": identity.get("model_type") or family, "model": ckpt.model_name, "samples_seen": samples,
            "gflops_per_sample": gps, "compute_gflops": gps * samples, "samples_seen_actual": samples,
            "compute_gflops_actual": gps * samples, "lr": identity.get("lr"),
            "global_batch_size": identity.get("global_batch_size"), "warmup": identity.get("warmup"),
            "run": identity.get("run", ""), "step": identity.get("step")}


def rows_for(identity: Mapping, downstream_dataset: str, metrics: Mapping[str, float]) -> list[dict]:
    return [{**identity, "downstream_dataset": downstream_dataset, "metric": m, "value": float(v)}
            for m, v in metrics.items()]


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e18:
        return str(int(v))
    return repr(v) if isinstance(v, float) else str(v)


def _key(row: Mapping) -> tuple:
    """Identity of a row with numbers compared as numbers (1.28e9 == 1280000000) and blanks as None."""
    out = []
    for c in IDENTITY_COLUMNS:
        v = row.get(c)
        v = None if v is None or str(v).strip() == "" or str(v) == "nan" else v
        if v is not None and c in NUMERIC_COLUMNS:
            try:
                v = float(v)
            except ValueError:
                v = str(v)
        out.append(str(v) if v is not None and c not in NUMERIC_COLUMNS else v)
    return tuple(out)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock beside the table (``.NAME.lock``, left in place: removing it would race)."""
    import fcntl

    with open(path.with_name(f".{path.name}.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    try:
        from vlscale.outputs import atomic_write_text
    except ImportError:
        atomic_write_text = None
    if atomic_write_text is not None:
        atomic_write_text(path, text)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_rows(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return []
    with open(p, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def append_rows(path: str | Path, rows: Iterable[Mapping]) -> int:
    """Adds the rows not yet in the CSV at ``path`` (by identity); returns how many were added."""
    target = Path(path)
    if target.exists() and target.is_dir():
        raise UserError(f"--results {target}: is a folder; give a CSV file name")
    rows = [dict(r) for r in rows]
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        header, old = [], []
        if target.is_file() and target.stat().st_size > 0:
            with open(target, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                header = list(reader.fieldnames or [])
                old = list(reader)
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise UserError(f"--results {target}: not a results table (no {', '.join(missing)} column)")
        seen = {_key(r) for r in old}
        new = []
        for r in rows:
            k = _key(r)
            if k not in seen:
                seen.add(k)
                new.append({c: _cell(v) for c, v in r.items()})
        if not new:
            return 0
        for c in list(COLUMNS) + [k for r in new for k in r]:
            if c not in header:
                header.append(c)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(old)
        writer.writerows(new)
        _write_atomic(target, buf.getvalue())
    return len(new)


def has_rows(path: str | Path, run: str, step: int, downstream_dataset: str) -> bool:
    """Whether the table already holds rows of this run's checkpoint on this dataset."""
    for r in read_rows(path):
        if (r.get("run") == str(run) and r.get("downstream_dataset") == downstream_dataset
                and r.get("step") not in (None, "") and int(float(r["step"])) == int(step)):
            return True
    return False
