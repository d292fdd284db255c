"""Evaluation rows in the fitter's schema (``vlscale.runtime.results_schema``) and an idempotent, atomic CSV append.

One row per (checkpoint, downstream dataset, metric). The checkpoint's identity comes from the trainer's
``run.json`` (the same names: ``pretrain_dataset``, ``lr_scheduler``, ``model_type``, ``model``, ``samples_seen``,
``gflops_per_sample``, ``lr``, ``global_batch_size``, ``warmup``, ``run``) and the checkpoint (``step`` and its own
samples seen). The run's final checkpoint is written at the run's nominal ``samples_seen`` (its target) with the
samples it really saw as ``samples_seen_actual``; an intermediate checkpoint (the constant-LR protocol) is written
at its own samples seen in both. ``compute_gflops = gflops_per_sample * samples_seen`` and likewise ``_actual``.

Appending (``vlscale.runtime.files.append_new_rows``) holds a lock, skips rows whose identity columns
(``IDENTITY_COLUMNS``) are already in the table, and replaces the file in one step (temp file + ``os.replace``),
so re-running adds nothing and a killed evaluation never leaves a torn table.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable, Mapping

from vlscale.runtime import csv_cells
from vlscale.errors import UserError
from vlscale.runtime.paths import resolve
from vlscale.runtime.files import append_new_rows
from vlscale.runtime.results_schema import IDENTITY_COLUMNS, NUMERIC_COLUMNS, OPTIONAL_COLUMNS, REQUIRED_COLUMNS

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


def read_rows(path: str | Path) -> list[dict]:
    p = resolve(path)
    if not p.is_file():
        return []
    text = p.read_text(encoding="utf-8")
    return [csv_cells.restore_row(r) for r in csv.DictReader(io.StringIO(text, newline=""))] if text else []


def _check_table(target: Path):
    def check(header: list[str]) -> None:
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise UserError(f"--results {target}: not a results table (no {', '.join(missing)} column)")
    return check


def append_rows(path: str | Path, rows: Iterable[Mapping]) -> int:
    """Adds the rows not yet in the CSV at ``path`` (by identity); returns how many were added.

    ``vlscale.runtime.files.append_new_rows`` does the locked read-merge-rewrite; this adds the schema's column order,
    the cell formatting, the identity key and the check that an existing file is a results table.
    """
    target = resolve(path)
    if target.exists() and target.is_dir():
        raise UserError(f"--results {target}: is a folder; give a CSV file name")
    cells = [{c: _cell(v) for c, v in dict(r).items()} for r in rows]
    return append_new_rows(target, cells, _key, COLUMNS, check=_check_table(target))


def has_rows(path: str | Path, run: str, step: int, downstream_dataset: str) -> bool:
    """Whether the table already holds rows of this run's checkpoint on this dataset."""
    for r in read_rows(path):
        if (r.get("run") == str(run) and r.get("downstream_dataset") == downstream_dataset
                and r.get("step") not in (None, "") and int(float(r["step"])) == int(step)):
            return True
    return False
