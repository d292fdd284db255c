"""The one checkpoint loader for inference (eval, embed, caption, export): trainer workdirs (``run.json`` +
``checkpoints/N``), step directories, and ``vlscale convert`` outputs, as a model name plus parameters in the
per-block layout that ``registry.build_model(name)`` takes.

Orbax I/O is ``vlscale.runtime.checkpoint``'s; this module adds what reading a model needs on top: the layout
conversion, the run's identity, whether a checkpoint is the run's final one, and a step directory that holds a
converted checkpoint (``checkpoints/N/vlscale_model.json``, e.g. a released model placed in a workdir by hand).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlscale.errors import UserError
from vlscale.models.saved_params import METADATA_FILE
from vlscale.runtime import checkpoint as orbax_io
from vlscale.runtime.paths import resolve

RUN_JSON = "run.json"
FINAL_JSON = "final.json"
CHECKPOINTS = "checkpoints"


@dataclass
class Checkpoint:
    """One checkpoint ready to evaluate. ``run`` is run.json (None for a converted checkpoint on its own)."""

    model_name: str
    params: Any
    path: str
    step: int | None = None
    samples_seen: int | None = None
    run: dict | None = None
    workdir: str | None = None
    final: bool = False


@dataclass(frozen=True)
class Entry:
    step: int
    samples_seen: int
    path: str


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON; was the run interrupted while writing it?") from None


def is_workdir(path: Path) -> bool:
    return (path / CHECKPOINTS).is_dir() or (path / RUN_JSON).is_file()


def list_checkpoints(workdir: str | Path) -> list[Entry]:
    """Complete checkpoints of a run, oldest first (trainer checkpoints and converted step directories)."""
    workdir = resolve(workdir)
    run = read_json(workdir / RUN_JSON) or {}
    found: dict[int, Entry] = {}
    for c in orbax_io.list_checkpoints(workdir):
        found[c.step] = Entry(c.step, c.samples_seen, c.path)
    root = workdir / CHECKPOINTS
    if root.is_dir():
        for d in root.iterdir():
            if d.name.isdigit() and (d / METADATA_FILE).is_file() and int(d.name) not in found:
                step = int(d.name)
                found[step] = Entry(step, step * int(run.get("global_batch_size") or 0), str(d))
    return [found[s] for s in sorted(found)]


def final_step(workdir: str | Path) -> int | None:
    final = read_json(resolve(workdir) / FINAL_JSON)
    return int(final["step"]) if final and "step" in final else None


def _check_model(run: dict | None, model_name: str, where: str) -> None:
    if run and run.get("model") and run["model"] != model_name:
        raise UserError(f"{where}: checkpoint of {model_name} but run.json says {run['model']}; "
                        "the checkpoint belongs to another run")


def load(path: str | Path, entry: Entry | None = None) -> Checkpoint:
    """A workdir (its latest checkpoint), a step directory ``WORKDIR/checkpoints/N``, or a converted directory."""
    p = resolve(path)
    if not p.exists():
        raise UserError(f"checkpoint {p} does not exist")
    if is_workdir(p):
        entries = list_checkpoints(p)
        if not entries:
            raise UserError(f"{p}: the run has no complete checkpoint yet")
        entry = entries[-1]
        return _load_step(p, entry)
    if p.parent.name == CHECKPOINTS and p.name.isdigit() and is_workdir(p.parent.parent):
        workdir = p.parent.parent
        return _load_step(workdir, _entry_of(workdir, p))
    if (p / METADATA_FILE).is_file():
        from vlscale.models import saved_params

        params, meta = saved_params.load_params(p)
        return Checkpoint(meta["model"], params, str(p))
    if is_training_checkpoint(p):
        return _load_training_step(p)
    raise UserError(f"{p} is not a vlscale checkpoint: expected a training workdir, WORKDIR/checkpoints/N, or a "
                    "`vlscale convert` output directory")


def _entry_of(workdir: Path, step_dir: Path) -> Entry:
    """The entry of one step directory; a training checkpoint is checked on its own (a damaged sibling does not
    stop it loading), anything else is looked up among the run's checkpoints."""
    linked = os.path.islink(os.fspath(step_dir)) if "://" not in os.fspath(step_dir) else False
    if orbax_io.is_owned(step_dir) or linked:
        meta = orbax_io.read_meta(step_dir)  # the layout, and the step it records (CheckpointError naming it)
        return Entry(int(meta["step"]), int(meta["samples_seen"]), str(step_dir))
    match = [e for e in list_checkpoints(workdir) if e.step == int(step_dir.name)]
    if not match:
        raise UserError(f"{step_dir}: not a complete checkpoint of {workdir}")
    return match[0]


def _load_step(workdir: Path, entry: Entry) -> Checkpoint:
    run = read_json(workdir / RUN_JSON)
    step_dir = resolve(entry.path)
    if (step_dir / METADATA_FILE).is_file():
        from vlscale.models import saved_params

        params, meta = saved_params.load_params(step_dir)
        model_name = meta["model"]
    else:
        loaded = _load_training_step(step_dir)
        model_name, params = loaded.model_name, loaded.params
    _check_model(run, model_name, str(step_dir))
    return Checkpoint(model_name, params, str(step_dir), entry.step, entry.samples_seen, run, str(workdir),
                      final=final_step(workdir) == entry.step)


def is_training_checkpoint(path) -> bool:
    """A training workdir or one of its step directories (as opposed to a ``vlscale convert`` output)."""
    p = resolve(path)
    return p.exists() and ((p / CHECKPOINTS).exists() or ((p / "meta").exists() and (p / "state").exists()))


def _load_training_step(path) -> Checkpoint:
    """A training workdir (its latest checkpoint) or step directory, parameters in the per-block layout."""
    from vlscale.models import layer_layout

    workdir, step_dir = orbax_io.resolve_step_dir(path)
    meta = orbax_io.read_meta(step_dir)
    run = read_json(resolve(workdir) / RUN_JSON)
    _check_model(run, meta["model"], str(step_dir))
    params = layer_layout.to_layout(orbax_io.restore_params(step_dir), meta["model"], scan_layers=False)
    return Checkpoint(meta["model"], params, str(step_dir), int(meta["step"]), int(meta["samples_seen"]), run)
