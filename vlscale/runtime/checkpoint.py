"""Orbax checkpoints of a training run: the manager, save/restore of the whole state, and parameters alone.

A step directory ``WORKDIR/checkpoints/N`` holds the state after N updates in three items: ``state`` (the
``TrainState`` pytree: parameters, optimizer state, step, RNG), ``data`` (each host's data-iterator position,
one JSON file per process, written by grain's handler) and ``meta`` (step, samples seen, the model, whether it
is a milestone). Orbax writes into a temporary directory and renames it when complete, so a run killed during
a save leaves no step directory that ``all_steps`` would list: a partial checkpoint is never picked.

Integrity (docs/security.md): ``save`` records a checksum of every array of the state in ``meta["integrity"]``
(``vlscale.runtime.integrity``); ``restore`` and ``restore_params`` check the layout of the step directory
(``check_step_dir``), that the recorded step is the directory's, and the checksum of every array they read.
A checkpoint that fails is a ``CheckpointError`` (a ``UserError``: one line naming it). The trainer falls back
to the newest checkpoint that passes.

Ownership: a step directory counts as ours only if it is a real folder (not a symbolic link) holding Orbax's step
metadata (``_CHECKPOINT_METADATA``); the manager lists, keeps and deletes only those (``OwnedSteps``), so a
folder such as ``checkpoints/3`` made by hand is never removed, and a ``checkpoints`` that is a symbolic link is
refused for writing (cleanup would delete inside its target).

Inference commands read checkpoints through ``vlscale.models.checkpoints`` (the one loader), which uses
``restore_params`` here and brings the parameters into the model's per-block layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from typing import Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from vlscale.errors import UserError
from vlscale.runtime import disk_errors, files, integrity

CHECKPOINTS = "checkpoints"
ITEMS = ("state", "data", "meta")
STEP_METADATA = "_CHECKPOINT_METADATA"  # Orbax writes it when it commits a step: the mark of a step we wrote


class CheckpointError(UserError):
    """A checkpoint that is incomplete, corrupt, or not the one its directory name says."""


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    step: int
    samples_seen: int
    path: str
    milestone: bool


class _DiskErrorLogFilter(logging.Filter):
    """Drops the logs (each with a traceback) that Orbax's background save threads write for a full or
    read-only disk: the trainer reports that error in one line when the save is awaited. Also those for an
    interrupt (Ctrl-C, a stop signal raised while Orbax waits for a save): the command reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and (disk_errors.is_disk_error(exc) or not isinstance(exc, Exception)):
            return False
        try:
            return not disk_errors.is_disk_error(RuntimeError(record.getMessage()))
        except Exception:  # noqa: BLE001 - a log record that cannot be formatted is not ours to judge
            return True


_DISK_FILTER = _DiskErrorLogFilter()


def _quiet_closed_loop_callbacks() -> None:
    """After a failed write (a full disk), TensorStore completes the save's other writes and calls back into the
    asyncio loop Orbax already closed; each callback prints a "RuntimeError: Event loop is closed" traceback
    (hundreds of them). Those are dropped; every other exception is printed as before."""
    import sys

    for name in ("excepthook", "unraisablehook"):
        previous = getattr(sys, name)
        if getattr(previous, "_vlscale_quiet_closed_loop", False):
            continue

        def hook(*args, _previous=previous):
            value = args[1] if len(args) > 1 else getattr(args[0], "exc_value", None)
            if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
                return
            _previous(*args)

        hook._vlscale_quiet_closed_loop = True
        setattr(sys, name, hook)


def manager(workdir, *, keep: int, milestone_steps: Iterable[int] = (), read_only: bool = False,
            async_save: bool = True) -> ocp.CheckpointManager:
    """The run's CheckpointManager: the latest ``keep`` checkpoints plus every milestone step, kept forever."""
    import grain

    policies = [checkpoint_managers.LatestN(max(int(keep), 1))]
    milestone_steps = sorted(set(int(s) for s in milestone_steps))
    if milestone_steps:
        policies.append(checkpoint_managers.CustomSteps(milestone_steps))
    root = absolute(workdir) / CHECKPOINTS
    # idempotent: a filter is added once. asyncio's logger too: a failed write's "Task exception was never
    # retrieved" reaches it when the task is collected, with the same disk error inside.
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_DISK_FILTER)
    _quiet_closed_loop_callbacks()
    if not read_only and not files.is_remote(root) and os.path.islink(os.fspath(root)):
        raise UserError(f"{root} is a symbolic link (to {os.path.realpath(os.fspath(root))}); vlscale deletes old "
                        "checkpoints there, so it must be a folder of this workdir: replace the link by a folder, "
                        "or give --workdir the folder it points to")
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, read_only=read_only, create=not read_only,
        cleanup_tmp_directories=not read_only, step_name_format=OwnedSteps())
    return ocp.CheckpointManager(
        root, options=options, item_names=ITEMS,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})


def save(mngr: ocp.CheckpointManager, state, data_iterator, meta: dict, *, force: bool = True) -> bool:
    """Saves (asynchronously) with ``meta["integrity"]``: the checksum of every array of ``state``, computed
    where the arrays live before the save starts."""
    import grain

    meta = dict(meta, integrity=integrity.record(state))
    return mngr.save(int(meta["step"]), force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator),
        meta=ocp.args.JsonSave(meta)))


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, data_iterator=None):
    """(state on the current mesh, meta), verified (``CheckpointError`` naming the step directory if not); the
    data iterator is set to its saved position when given."""

    step_dir = mngr.directory / str(int(step))
    meta = read_meta(step_dir)  # checks the directory's layout and its recorded step first
    args = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    with _unreadable_as_error(step_dir):
        out = mngr.restore(int(step), args=ocp.args.Composite(**args))
        if data_iterator is not None:
            _restore_data(step_dir, data_iterator)
    verify(step_dir, meta, out["state"])
    return out["state"], meta


class NeedsAllHosts(Exception):
    """Raised by a data iterator's ``set_state`` when this host's own saved state is not enough to continue (its
    topology changed in a way only every host's state together can resolve); ``restore`` then passes them all."""


def _restore_data(step_dir, data_iterator) -> None:
    """Sets the iterator to its saved position: this host's own file (grain's handler wrote one per process) when
    there is one and it suffices, else ``{"elastic": [every saved host's state]}`` (a checkpoint of another
    host or worker count); the iterator decides what it can continue (``DataIterator.load_state_dict``)."""
    own = _own_data_file(step_dir)
    if own.exists():
        try:
            data_iterator.set_state(own.read_text().encode())
            data_iterator.start_prefetch()
            return
        except NeedsAllHosts:
            pass
    saved = list(epath.Path(step_dir, "data").glob("process_*-of-*.json"))
    if not saved:
        raise CheckpointError(f"checkpoint {step_dir} holds no data position (data/process_*-of-*.json)")
    saved.sort(key=lambda p: int(p.name.split("_", 1)[1].split("-", 1)[0]))
    data_iterator.set_state({"elastic": [json.loads(p.read_text()) for p in saved]})
    data_iterator.start_prefetch()


def _own_data_file(step_dir):
    import jax

    return epath.Path(step_dir) / "data" / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


def verify(step_dir, meta: dict, tree, *, prefix: str = "") -> None:
    """``tree`` (restored from ``step_dir``) has the checksums ``meta`` recorded; a checkpoint saved before
    vlscale recorded them passes unchecked."""
    record = meta.get("integrity")
    if record is None:
        return
    if record.get("algorithm") != integrity.ALGORITHM:
        raise CheckpointError(f"checkpoint {step_dir}: checksums of an unknown kind ({record.get('algorithm')!r}); "
                              "written by a newer vlscale?")
    bad = integrity.mismatches(record, tree, prefix=prefix)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CheckpointError(f"checkpoint {step_dir} is corrupt: the data read back for {bad[0]}{more} does not "
                              "match the checksum recorded when it was saved")


# Files a complete step directory holds: Orbax's step metadata, each item's, and the OCDBT root of the state.
_REQUIRED_FILES = (STEP_METADATA, "meta/metadata", "state/_METADATA", "state/manifest.ocdbt")


def check_step_dir(step_dir) -> None:
    """The layout of a complete checkpoint, without reading its arrays: a real folder (no symbolic link at or
    under it), the required files present and non-empty, a ``data`` item. ``CheckpointError`` otherwise."""
    p = epath.Path(step_dir)
    if files.is_remote(p):
        missing = [f for f in _REQUIRED_FILES if not (p / f).exists()]
        if missing:
            raise CheckpointError(f"checkpoint {step_dir} is incomplete: {missing[0]} is missing")
        return
    local = os.fspath(p)
    if os.path.islink(local):
        raise CheckpointError(f"checkpoint {step_dir} is a symbolic link (to {os.path.realpath(local)}); vlscale "
                              "reads only the checkpoints a run wrote in its own workdir")
    if not os.path.isdir(local):
        raise CheckpointError(f"checkpoint {step_dir} is not a folder")
    for folder, dirs, names in os.walk(local):
        for name in dirs + names:
            if os.path.islink(os.path.join(folder, name)):
                rel = os.path.relpath(os.path.join(folder, name), local)
                raise CheckpointError(f"checkpoint {step_dir}: {rel} is a symbolic link; a checkpoint vlscale "
                                      "wrote holds only regular files")
    for rel in _REQUIRED_FILES:
        f = os.path.join(local, rel)
        if not os.path.isfile(f):
            raise CheckpointError(f"checkpoint {step_dir} is incomplete: {rel} is missing")
        if os.path.getsize(f) == 0:
            raise CheckpointError(f"checkpoint {step_dir} is incomplete: {rel} is empty")
    if not os.path.isdir(os.path.join(local, "data")):
        raise CheckpointError(f"checkpoint {step_dir} is incomplete: the data item (data/) is missing")


def read_meta(step_dir) -> dict:
    """The ``meta`` item of a step directory whose layout passes ``check_step_dir`` and whose recorded step is
    the directory's name."""
    path = epath.Path(step_dir) / "meta" / "metadata"
    if not path.exists() and not (epath.Path(step_dir) / STEP_METADATA).exists():
        raise UserError(f"{step_dir}: not a vlscale training checkpoint (no meta item)")
    check_step_dir(step_dir)
    try:
        meta = json.loads(path.read_text())
        step, samples = int(meta["step"]), int(meta["samples_seen"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {step_dir}: unreadable meta/metadata ({type(e).__name__}: {e})")
    name = epath.Path(step_dir).name
    if name.isdigit() and int(name) != step:
        raise CheckpointError(f"checkpoint {step_dir} records step {step} ({samples:,} samples), not {int(name)}: "
                              "it was copied or linked from elsewhere")
    if samples < 0 or step < 0:
        raise CheckpointError(f"checkpoint {step_dir}: meta/metadata records step {step}, {samples} samples")
    return meta


@contextlib.contextmanager
def _unreadable_as_error(step_dir):
    """Orbax and TensorStore report damaged files with many exception types: each is a CheckpointError here."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - TensorStore raises bare Exception too; its text says what broke
        text = " ".join(str(e).split())
        raise CheckpointError(f"checkpoint {step_dir} cannot be read ({type(e).__name__}: {text[:300]})") from e


def set_aside(mngr: ocp.CheckpointManager, step: int) -> str:
    """Renames a damaged step directory to ``N.damaged`` (``N.damaged.2``, ...), out of the manager's sight:
    kept for inspection, and the run can save step N again. Returns the new path."""
    src = mngr.directory / str(int(step))
    if files.is_remote(src):  # an object store has no rename of a folder: drop it
        mngr.delete(int(step))
        return f"(deleted) {src}"
    dst, n = epath.Path(f"{src}.damaged"), 1
    while dst.exists():
        n += 1
        dst = epath.Path(f"{src}.damaged.{n}")
    os.rename(os.fspath(src), os.fspath(dst))
    return str(dst)


def is_owned(step_dir) -> bool:
    """A step directory Orbax wrote: a real folder with Orbax's step metadata."""
    p = epath.Path(step_dir)
    if not files.is_remote(p) and os.path.islink(os.fspath(p)):
        return False
    return p.is_dir() and (p / STEP_METADATA).exists()


def foreign_entries(workdir) -> list[str]:
    """Paths in ``WORKDIR/checkpoints`` named like a step that vlscale did not write (left alone, warned about)."""
    root = epath.Path(workdir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(str(p) for p in root.iterdir() if p.name.isdigit() and not is_owned(p))


class OwnedSteps:
    """Orbax's standard step naming (``checkpoints/N``) that lists only the steps we wrote (``is_owned``), so the
    manager's cleanup never deletes a folder someone else put there, nor one a symbolic link leads to."""

    def __init__(self):
        from orbax.checkpoint import path as ocp_path

        self._standard = ocp_path.step.standard_name_format()

    def build_name(self, step: int) -> str:
        return self._standard.build_name(step)

    def find_all(self, base_path):
        return (m for m in self._standard.find_all(base_path) if is_owned(m.path))

    def find_step(self, base_path, step: int):
        meta = self._standard.find_step(base_path, step)
        if not is_owned(meta.path):
            raise ValueError(f"{meta.path} was not written by vlscale")
        return meta


def list_checkpoints(workdir) -> list[CheckpointInfo]:
    """The complete checkpoints of a run, oldest first."""
    root = epath.Path(workdir) / CHECKPOINTS
    if not root.exists():
        return []
    out = []
    for step in ocp.utils.checkpoint_steps(root):
        step_dir = root / str(step)
        if not is_owned(step_dir) and not os.path.islink(os.fspath(step_dir)):
            continue  # not written by vlscale (``foreign_entries``)
        meta = read_meta(step_dir)  # a damaged or linked checkpoint is an error naming it, never skipped
        out.append(CheckpointInfo(step=int(step), samples_seen=int(meta["samples_seen"]), path=str(step_dir),
                                  milestone=bool(meta.get("milestone", False))))
    return sorted(out, key=lambda c: c.step)


def resolve_step_dir(path) -> tuple[epath.Path, epath.Path]:
    """A workdir (its latest checkpoint) or a step directory -> (workdir, step dir)."""
    p = epath.Path(path)
    if (p / CHECKPOINTS).exists():
        ckpts = list_checkpoints(p)
        if not ckpts:
            raise UserError(f"{path}: the run has no complete checkpoint yet")
        return p, epath.Path(ckpts[-1].path)
    if (p / "meta").exists() and (p / "state").exists():
        return p.parent.parent, p
    raise UserError(f"{path}: not a training workdir or checkpoint step directory")


# --- parameters only (inference) ------------------------------------------------------------------------


# Parameter shapes of a checkpoint's tree, keyed by the bytes of its Orbax tree and array metadata files: every
# checkpoint of a run has the same ones, and parsing them costs more than restoring a small model's parameters.
_PARAM_SHAPES: dict = {}


def _metadata_key(state_dir) -> tuple | None:
    import hashlib

    files = [epath.Path(state_dir) / "_METADATA"]
    arrays = epath.Path(state_dir) / "array_metadatas"
    if arrays.is_dir():
        files += sorted(arrays.iterdir())
    try:
        return tuple(hashlib.sha256(f.read_bytes()).hexdigest() for f in files)
    except OSError:
        return None


def absolute(path) -> epath.Path:
    """``path`` as an epath; a local relative path made absolute (Orbax's OCDBT store refuses relative ones)."""
    text = str(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


@contextlib.contextmanager
def _quiet_absl():
    """absl WARNINGs off for a block (restored after)."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _param_shapes(ckptr, state_dir):
    """The ``params`` subtree as (shape, dtype) leaves, from Orbax's metadata (cached per distinct metadata)."""
    key = _metadata_key(state_dir)
    if key is not None and key in _PARAM_SHAPES:
        return _PARAM_SHAPES[key]
    with _quiet_absl():  # Orbax looks for a step-level _CHECKPOINT_METADATA inside the item folder and warns
        metadata = ckptr.metadata(state_dir)
    tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata.tree
    shapes = jax.tree.map(lambda m: (tuple(m.shape), np.dtype(m.dtype)), tree["params"],
                          is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
    if key is not None:
        _PARAM_SHAPES[key] = shapes
    return shapes


def restore_params(step_dir) -> dict:
    """Only the parameters of a training checkpoint (the trainer's layout), as host arrays; no optimizer state read.
    Verified as ``restore`` verifies (``CheckpointError`` naming the step directory)."""
    meta = read_meta(step_dir)
    with _unreadable_as_error(step_dir):
        params = _read_params(step_dir)
    verify(step_dir, meta, params, prefix="params/")
    return params


def _read_params(step_dir) -> dict:
    ckptr = ocp.PyTreeCheckpointer()
    state_dir = absolute(step_dir) / "state"
    target = jax.tree.map(lambda sd: np.zeros(*sd), _param_shapes(ckptr, state_dir),
                          is_leaf=lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], np.dtype))
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    out = ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(
        item={"params": target}, restore_args={"params": restore_args}, partial_restore=True))
    return out["params"]


def sha256_of_params(params) -> str:
    """sha256 over the parameter leaves' full bytes (C order) in tree order (``final.json``): compare runs without
    loading them. The value does not depend on how the leaves are sharded or over how many processes: a leaf that
    spans other processes' devices is gathered whole, one leaf at a time, so every process must call this (it is a
    collective then) and host memory holds one full leaf at most. Host arrays hash the same as device arrays."""
    import hashlib

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        h.update(np.ascontiguousarray(_full_value(leaf)).tobytes())
    return h.hexdigest()


def _full_value(leaf) -> np.ndarray:
    """A leaf's global value on this host: a plain fetch when this process holds all of it, else an all-gather."""
    if isinstance(leaf, jax.Array) and not (leaf.is_fully_addressable or leaf.is_fully_replicated):
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(jax.device_get(leaf))

