"""Orbax checkpoints of a training run: the manager, save/restore of the whole state, and parameters alone.

A step directory ``WORKDIR/checkpoints/N`` holds the state after N updates in three items: ``state`` (the
``TrainState`` pytree: parameters, optimizer state, step, RNG), ``data`` (each host's data-iterator position,
one JSON file per process, written by grain's handler) and ``meta`` (step, samples seen, the model, whether it
is a milestone). Orbax writes into a temporary directory and renames it when complete, so a run killed during
a save leaves no step directory that ``all_steps`` would list: a partial checkpoint is never picked.

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

CHECKPOINTS = "checkpoints"
ITEMS = ("state", "data", "meta")


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    step: int
    samples_seen: int
    path: str
    milestone: bool


def manager(workdir, *, keep: int, milestone_steps: Iterable[int] = (), read_only: bool = False,
            async_save: bool = True) -> ocp.CheckpointManager:
    """The run's CheckpointManager: the latest ``keep`` checkpoints plus every milestone step, kept forever."""
    import grain

    policies = [checkpoint_managers.LatestN(max(int(keep), 1))]
    milestone_steps = sorted(set(int(s) for s in milestone_steps))
    if milestone_steps:
        policies.append(checkpoint_managers.CustomSteps(milestone_steps))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, read_only=read_only, create=not read_only,
        cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(
        absolute(workdir) / CHECKPOINTS, options=options, item_names=ITEMS,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})


def save(mngr: ocp.CheckpointManager, state, data_iterator, meta: dict, *, force: bool = True) -> bool:
    import grain

    return mngr.save(int(meta["step"]), force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator),
        meta=ocp.args.JsonSave(meta)))


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, data_iterator=None):
    """(state on the current mesh, meta); the data iterator is set to its saved position when given."""
    import grain

    args = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if data_iterator is not None:
        args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    out = mngr.restore(int(step), args=ocp.args.Composite(**args))
    return out["state"], out["meta"]


def read_meta(step_dir) -> dict:
    path = epath.Path(step_dir) / "meta" / "metadata"
    if not path.exists():
        raise UserError(f"{step_dir}: not a vlscale training checkpoint (no meta item)")
    return json.loads(path.read_text())


def list_checkpoints(workdir) -> list[CheckpointInfo]:
    """The complete checkpoints of a run, oldest first."""
    root = epath.Path(workdir) / CHECKPOINTS
    if not root.exists():
        return []
    out = []
    for step in ocp.utils.checkpoint_steps(root):
        step_dir = root / str(step)
        try:
            meta = read_meta(step_dir)
        except (UserError, json.JSONDecodeError):
            continue
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
    """Only the parameters of a training checkpoint (the trainer's layout), as host arrays; no optimizer state read."""
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

