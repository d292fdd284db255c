"""open_clip / open_clip_mammut state dicts <-> vlscale Flax parameters: the key mapping and the array transforms.

The mapping is fixed per parameter (reference §3.3): torch MHA's packed ``in_proj_weight [3w, w]`` splits into
``attn/{query,key,value}/kernel [w, H, hd]``; ``out_proj.weight [w, w]`` becomes ``attn/out/kernel [H, hd, w]``;
Linear weights transpose; ``conv1.weight [w, 3, p, p]`` becomes ``conv1/kernel [p, p, 3, w]``; LayerNorm
``weight`` is ``scale``; embeddings, positional/class embeddings, projections, layer-scale gammas and
``logit_scale`` are copied unchanged. Every transform is a transpose, slice or reshape, so a round trip is
bit-exact.

A Flax path maps to a torch key by joining with '.', writing list entries ``resblocks_{i}`` / ``cross_attn_{j}``
as ``resblocks.{i}`` / ``cross_attn.{j}``. Scan-stacked parameters (``resblocks`` with a leading layer axis) are
unstacked before export and restacked after import (``layer_layout``). Files are read and written by
``state_dict_files``; vlscale's own converted folders by ``saved_params``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vlscale.errors import UserError
from vlscale.models.layer_layout import (LIST_ENTRY, flatten_tree, to_layout, to_plain_dict, unflatten_tree,
                                         unstack_layers)
from vlscale.models.state_dict_files import contiguous_float32, load_state_dict_file, to_numpy

QKV_SLOTS = {"query": 0, "key": 1, "value": 2}
# Non-persistent buffers that some checkpoints still carry.
IGNORED_SUFFIXES = ("attn_mask",)


class CheckpointMismatchError(UserError):
    """The checkpoint's keys or shapes do not match the model; the full lists are attributes."""

    def __init__(self, model_name: str, missing: list, unexpected: list, mismatched: list):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched

        def head(items, n=4):
            items = [str(i) for i in items]
            return ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys [{head(missing)}]")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys [{head(unexpected)}]")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches [{head(mismatched)}]")
        super().__init__(
            f"checkpoint does not fit model {model_name!r}: " + "; ".join(parts)
            + " (check --model matches the checkpoint's architecture)"
        )


# --- paths ---------------------------------------------------------------------------------------------------------


def _torch_module_path(parts: tuple[str, ...]) -> str:
    return ".".join(LIST_ENTRY.sub(r"\1.\2", p) for p in parts)


def flax_leaf_to_torch(path: tuple[str, ...]) -> tuple[str, str, int | None]:
    """(torch key, transform kind, q|k|v slot) for a Flax parameter path (unstacked layout)."""
    *mods, leaf = path
    if len(mods) >= 2 and mods[-2] == "attn" and mods[-1] in QKV_SLOTS:
        key = _torch_module_path(tuple(mods[:-1])) + (".in_proj_weight" if leaf == "kernel" else ".in_proj_bias")
        return key, ("qkv_kernel" if leaf == "kernel" else "qkv_bias"), QKV_SLOTS[mods[-1]]
    if len(mods) >= 2 and mods[-2] == "attn" and mods[-1] == "out":
        key = _torch_module_path(tuple(mods[:-1])) + (".out_proj.weight" if leaf == "kernel" else ".out_proj.bias")
        return key, ("out_kernel" if leaf == "kernel" else "copy"), None
    prefix = _torch_module_path(tuple(mods))
    join = (lambda name: f"{prefix}.{name}" if prefix else name)  # noqa: E731
    if leaf == "kernel" and mods and mods[-1] == "conv1":
        return join("weight"), "conv_kernel", None
    if leaf == "kernel":
        return join("weight"), "linear_kernel", None
    if leaf in ("scale", "embedding"):
        return join("weight"), "copy", None
    return join(leaf), "copy", None


# --- state dicts ---------------------------------------------------------------------------------------------------


def normalize_state_dict(state_dict: Mapping[str, Any], family: str) -> dict[str, np.ndarray]:
    """Strips DDP's ``module.`` prefix, drops non-persistent buffers, and for CLIP moves a CustomTextCLIP
    ``text.``-prefixed text tower to the top level (open_clip's ``CLIP`` layout)."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k.endswith(IGNORED_SUFFIXES):
            continue
        if family == "clip" and k.startswith("text."):
            k = k[len("text."):]
        out[k] = to_numpy(v)
    return out


def _from_torch(kind: str, slot: int | None, t: np.ndarray, shape: tuple) -> np.ndarray:
    """The Flax array of ``shape`` for torch tensor ``t``; ValueError when the shapes cannot match."""
    if kind == "qkv_kernel":
        w = shape[0]
        if t.shape != (3 * w, w):
            raise ValueError
        return t[slot * w:(slot + 1) * w].T.reshape(shape)
    if kind == "qkv_bias":
        w = int(np.prod(shape))
        if t.shape != (3 * w,):
            raise ValueError
        return t[slot * w:(slot + 1) * w].reshape(shape)
    if kind == "out_kernel":
        w = shape[-1]
        if t.shape != (w, w):
            raise ValueError
        return t.T.reshape(shape)
    if kind == "conv_kernel":
        out = t.transpose(2, 3, 1, 0)
    elif kind == "linear_kernel":
        out = t.T
    else:
        out = t
    if out.shape != tuple(shape):
        raise ValueError
    return out


def _expected_torch_shape(kind: str, shape: tuple) -> tuple:
    if kind == "qkv_kernel":
        return (3 * shape[0], shape[0])
    if kind == "qkv_bias":
        return (3 * int(np.prod(shape)),)
    if kind == "out_kernel":
        return (shape[-1], shape[-1])
    if kind == "conv_kernel":
        return (shape[3], shape[2], shape[0], shape[1])
    if kind == "linear_kernel":
        return tuple(reversed(shape))
    return tuple(shape)


def torch_to_flax(state_dict: Mapping[str, Any], model_name_or_config: Any, scan_layers: bool = False) -> dict:
    """Flax parameters (numpy float32) for an open_clip / MaMMUT state dict.

    Accepts ``module.``-prefixed keys and both CLIP text layouts. Raises ``CheckpointMismatchError`` listing missing
    and unexpected keys and shape mismatches.
    """
    from vlscale.models.config import get_config
    from vlscale.models.registry import build_model, param_shapes

    cfg = get_config(model_name_or_config)
    sd = normalize_state_dict(state_dict, cfg.family)
    shapes = flatten_tree(param_shapes(build_model(cfg)))
    flat, used, missing, mismatched = {}, set(), [], []
    for path, spec in shapes.items():
        key, kind, slot = flax_leaf_to_torch(path)
        if key not in sd:
            if key not in missing:
                missing.append(key)
            continue
        used.add(key)
        try:
            flat[path] = np.asarray(_from_torch(kind, slot, sd[key], tuple(spec.shape)), dtype=np.float32)
        except ValueError:
            entry = f"{key}: got {list(sd[key].shape)}, expected {list(_expected_torch_shape(kind, spec.shape))}"
            if entry not in mismatched:
                mismatched.append(entry)
    unexpected = sorted(set(sd) - used)
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(cfg.name, missing, unexpected, mismatched)
    return to_layout(unflatten_tree(flat), cfg, scan_layers)


def expected_state_dict_shapes(model_name_or_config: Any) -> dict[str, tuple]:
    """The open_clip state-dict keys and shapes a model's checkpoint holds (computed without allocating)."""
    from vlscale.models.registry import build_model, param_shapes

    # Trace the scanned model (fast for deep stacks) and unstack zero-stride views of its shapes.
    shapes = param_shapes(build_model(model_name_or_config, scan_layers=True))
    zero = np.zeros((), np.float32)
    views = unflatten_tree({p: np.broadcast_to(zero, s.shape) for p, s in flatten_tree(to_plain_dict(shapes)).items()})
    out: dict[str, tuple] = {}
    for path, a in flatten_tree(unstack_layers(views)).items():
        key, kind, _ = flax_leaf_to_torch(path)
        out[key] = _expected_torch_shape(kind, tuple(a.shape))
    return out


def flax_to_torch(params: Mapping, model_name_or_config: Any = None,
                  text_prefix: bool = False) -> dict[str, np.ndarray]:
    """An open_clip state dict (key -> float32 numpy) that ``load_state_dict(strict=True)`` accepts.

    Scan-stacked parameters are unstacked first. ``text_prefix=True`` writes a CLIP text tower under ``text.``
    (CustomTextCLIP layout); MaMMUT keys always carry ``text.``.
    """
    flat = flatten_tree(unstack_layers(params))
    out: dict[str, np.ndarray] = {}
    qkv: dict[str, dict[int, np.ndarray]] = {}
    for path, value in flat.items():
        a = np.asarray(value)
        key, kind, slot = flax_leaf_to_torch(path)
        if kind == "qkv_kernel":
            w = a.shape[0]
            qkv.setdefault(key, {})[slot] = a.reshape(w, -1).T
        elif kind == "qkv_bias":
            qkv.setdefault(key, {})[slot] = a.reshape(-1)
        elif kind == "out_kernel":
            out[key] = a.reshape(-1, a.shape[-1]).T
        elif kind == "conv_kernel":
            out[key] = a.transpose(3, 2, 0, 1)
        elif kind == "linear_kernel":
            out[key] = a.T
        else:
            out[key] = a
    for key, slots in qkv.items():
        if sorted(slots) != [0, 1, 2]:
            raise ValueError(f"{key}: query/key/value incomplete (have slots {sorted(slots)})")
        out[key] = np.concatenate([slots[0], slots[1], slots[2]], axis=0)
    out = {k: contiguous_float32(v) for k, v in out.items()}
    if text_prefix:
        family = None
        if model_name_or_config is not None:
            from vlscale.models.config import get_config

            family = get_config(model_name_or_config).family
        if family != "mammut":
            out = {(k if k.startswith(("visual.", "logit_scale", "text.")) else "text." + k): v for k, v in out.items()}
    return out



def from_open_clip(path: str | Path, model_name: str, scan_layers: bool = False, *, trust_pickle: bool = False) -> dict:
    """Reads an open_clip / MaMMUT checkpoint file into Flax parameters for ``model_name`` (see
    ``load_state_dict_file`` for ``trust_pickle``)."""
    return torch_to_flax(load_state_dict_file(path, trust_pickle=trust_pickle), model_name, scan_layers=scan_layers)
