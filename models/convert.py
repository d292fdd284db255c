"""open_clip / open_clip_mammut state dicts <-> vlscale Flax parameters, and Orbax save/load of parameters.

The mapping is fixed per parameter (reference §3.3): torch MHA's packed ``in_proj_weight [3w, w]`` splits into
``attn/{query,key,value}/kernel [w, H, hd]``; ``out_proj.weight [w, w]`` becomes ``attn/out/kernel [H, hd, w]``;
Linear weights transpose; ``conv1.weight [w, 3, p, p]`` becomes ``conv1/kernel [p, p, 3, w]``; LayerNorm
``weight`` is ``scale``; embeddings, positional/class embeddings, projections, layer-scale gammas and
``logit_scale`` are copied unchanged. Every transform is a transpose, slice or reshape, so a round trip is
bit-exact.

A Flax path maps to a torch key by joining with '.', writing list entries ``resblocks_{i}`` / ``cross_attn_{j}``
as ``resblocks.{i}`` / ``cross_attn.{j}``. Scan-stacked parameters (``resblocks`` with a leading layer axis) are
unstacked before export and restacked after import (``stack_layers`` / ``unstack_layers``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vlscale.errors import UserError

# Module lists in open_clip whose entries are indexed (``resblocks.3``) and whose Flax entries are ``resblocks_3``.
LIST_NAMES = ("resblocks", "cross_attn")
QKV_SLOTS = {"query": 0, "key": 1, "value": 2}
METADATA_FILE = "vlscale_model.json"
PARAMS_SUBDIR = "params"
FORMAT_VERSION = "vlscale-params-v1"
# Non-persistent buffers that some checkpoints still carry.
IGNORED_SUFFIXES = ("attn_mask",)
TORCH_HINT = "install torch (pip install 'vlscale[torch]') to read .pt files; .safetensors needs no torch"


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

_LIST_ENTRY = re.compile(rf"^({'|'.join(LIST_NAMES)})_(\d+)$")


def _torch_module_path(parts: tuple[str, ...]) -> str:
    return ".".join(_LIST_ENTRY.sub(r"\1.\2", p) for p in parts)


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


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree


# --- scan layout ---------------------------------------------------------------------------------------------------


def unstack_layers(params: Mapping) -> dict:
    """Turns every scan-stacked ``resblocks``/``cross_attn`` subtree into ``resblocks_{i}`` entries (and a
    MaMMUT decoder's scanned ``layer_groups`` into its per-block entries)."""
    if "layer_groups" in params:
        from vlscale.models.mammut import unscan_decoder_params

        params = unscan_decoder_params(params)
    out = {}
    for k, v in params.items():
        if isinstance(v, Mapping) and k in LIST_NAMES:
            leaves = _flatten(v)
            n = next(iter(leaves.values())).shape[0]
            for i in range(n):
                out[f"{k}_{i}"] = _unflatten({p: a[i] for p, a in leaves.items()})
        elif isinstance(v, Mapping):
            out[k] = unstack_layers(v)
        else:
            out[k] = v
    return out


def stack_layers(params: Mapping) -> dict:
    """Inverse of ``unstack_layers``: ``resblocks_{i}`` entries become one ``resblocks`` subtree [L, ...]."""
    out: dict = {}
    groups: dict[str, dict[int, Any]] = {}
    for k, v in params.items():
        m = _LIST_ENTRY.match(k)
        if m and isinstance(v, Mapping):
            groups.setdefault(m.group(1), {})[int(m.group(2))] = v
        elif isinstance(v, Mapping):
            out[k] = stack_layers(v)
        else:
            out[k] = v
    for name, entries in groups.items():
        ordered = [_flatten(entries[i]) for i in range(len(entries))]
        out[name] = _unflatten({p: np.stack([np.asarray(e[p]) for e in ordered]) for p in ordered[0]})
    return out


def is_stacked(params: Mapping) -> bool:
    for k, v in params.items():
        if isinstance(v, Mapping) and (k in LIST_NAMES or is_stacked(v)):
            return True
    return False


def to_layout(params: Mapping, model_name_or_config: Any, scan_layers: bool) -> dict:
    """``params`` (either layout) in the layout a model built with ``scan_layers`` expects."""
    from vlscale.models.config import get_config

    params = unstack_layers(params)
    if not scan_layers:
        return params
    if get_config(model_name_or_config).family == "mammut":
        from vlscale.models.mammut import to_scan_layout

        return to_scan_layout({**params, "visual": stack_layers(params["visual"])})
    return stack_layers(params)


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
        out[k] = _to_numpy(v)
    return out


def _to_numpy(v: Any) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v
    if hasattr(v, "detach"):  # torch tensor; bf16 has no numpy dtype
        t = v.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(v)


def _contiguous(a: Any) -> np.ndarray:
    """A C-contiguous float32 copy that keeps 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
    return np.array(a, dtype=np.float32, order="C", copy=True)


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
    shapes = _flatten(param_shapes(build_model(cfg)))
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
    return to_layout(_unflatten(flat), cfg, scan_layers)


def expected_state_dict_shapes(model_name_or_config: Any) -> dict[str, tuple]:
    """The open_clip state-dict keys and shapes a model's checkpoint holds (computed without allocating)."""
    from vlscale.models.registry import build_model, param_shapes

    # Trace the scanned model (fast for deep stacks) and unstack zero-stride views of its shapes.
    shapes = param_shapes(build_model(model_name_or_config, scan_layers=True))
    zero = np.zeros((), np.float32)
    views = _unflatten({p: np.broadcast_to(zero, s.shape) for p, s in _flatten(_to_plain_dict(shapes)).items()})
    out: dict[str, tuple] = {}
    for path, a in _flatten(unstack_layers(views)).items():
        key, kind, _ = flax_leaf_to_torch(path)
        out[key] = _expected_torch_shape(kind, tuple(a.shape))
    return out


def flax_to_torch(params: Mapping, model_name_or_config: Any = None,
                  text_prefix: bool = False) -> dict[str, np.ndarray]:
    """An open_clip state dict (key -> float32 numpy) that ``load_state_dict(strict=True)`` accepts.

    Scan-stacked parameters are unstacked first. ``text_prefix=True`` writes a CLIP text tower under ``text.``
    (CustomTextCLIP layout); MaMMUT keys always carry ``text.``.
    """
    flat = _flatten(unstack_layers(params))
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
    out = {k: _contiguous(v) for k, v in out.items()}
    if text_prefix:
        family = None
        if model_name_or_config is not None:
            from vlscale.models.config import get_config

            family = get_config(model_name_or_config).family
        if family != "mammut":
            out = {(k if k.startswith(("visual.", "logit_scale", "text.")) else "text." + k): v for k, v in out.items()}
    return out


# --- files ---------------------------------------------------------------------------------------------------------


def _reason(e: BaseException) -> str:
    """The informative line of a loader's error (torch's messages run over many lines)."""
    import re

    text = str(e)
    m = re.search(r"(Unsupported global: GLOBAL \S+|unsupported GLOBAL \S+)", text)
    if m:
        return m.group(1)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else type(e).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def _torch_load(path: Path, trust_pickle: bool):
    import pickle

    import torch

    try:
        # weights_only: the unpickler accepts tensors, containers and plain values only and never runs code
        # from the file; open_clip / MaMMUT checkpoints (state dict, epoch, optimizer state) load this way.
        return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if not trust_pickle and "weights only" in str(e).lower():
            raise UserError(f"{path}: refused to unpickle ({_reason(e)}): a weights-only load allows tensors and "
                            "plain values, never code; if you trust where this file came from, pass "
                            "--trust-pickle (see docs/security.md)") from None
        raise UserError(f"{path} is not a readable torch checkpoint ({_reason(e)})") from None
    except Exception as e:  # noqa: BLE001 - unpickling arbitrary bytes raises nearly any type
        # Text/CSV files (KeyError, IndexError), truncated zips (RuntimeError), classes that do not exist here.
        raise UserError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: {_reason(e)})") from None


def load_state_dict_file(path: str | Path, *, trust_pickle: bool = False) -> dict[str, np.ndarray]:
    """Reads an open_clip checkpoint: ``.safetensors``, ``.npz`` (no pickles), or a torch file (``.pt``/``.pth``
    /``.bin``, ``{"state_dict": ...}`` or a bare dict; needs torch). Returns key -> numpy array.

    Torch files are loaded with ``weights_only=True``: a pickle that would run code is refused with a
    ``UserError``. ``trust_pickle=True`` lifts that (full pickle: only for files from a source you trust).
    Unreadable or truncated files are ``UserError`` naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder; give the .pt/.safetensors file (a folder written by "
                        "`vlscale convert` is already converted)")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as e:  # noqa: BLE001 - SafetensorError has no importable base; all mean "bad file"
            raise UserError(f"{path} is not a readable .safetensors file ({_reason(e)})") from None
    if suffix == ".npz":
        import zipfile

        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f"{path} is not a readable .npz file ({_reason(e)})") from None
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise UserError(f"cannot read {path}: {TORCH_HINT}") from e
    obj = _torch_load(path, trust_pickle)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict or {{'state_dict': ...}}")
    tensors = {k: _to_numpy(v) for k, v in obj.items() if hasattr(v, "shape")}
    if not tensors:
        raise UserError(f"{path} holds no tensors (keys: {', '.join(map(str, list(obj)[:5]))})")
    return tensors


def save_state_dict_file(state_dict: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Writes ``.safetensors`` (preferred: no pickle, no torch needed) or ``.pt`` (a bare torch state dict;
    needs torch), atomically (a temporary file, then a rename)."""
    from vlscale.runtime.files import atomic_path

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.numpy import save_file

        with atomic_path(path) as tmp:
            save_file({k: _contiguous(v) for k, v in state_dict.items()}, str(tmp))
        return path
    try:
        import torch
    except ImportError as e:
        raise UserError(f"cannot write {path}: install torch (pip install 'vlscale[torch]') to write .pt files, "
                        "or write .safetensors") from e
    with atomic_path(path) as tmp:
        torch.save({k: torch.from_numpy(_contiguous(v)) for k, v in state_dict.items()}, str(tmp))
    return path


def save_params(directory: str | Path, params: Any, model_name: str) -> Path:
    """Saves parameters as an Orbax checkpoint under ``DIR/params`` with ``DIR/vlscale_model.json`` beside it.

    Parameters are stored unstacked so any runtime layout can restore them. The pair is written into a
    temporary folder and moved into ``DIR`` together (``vlscale.runtime.files.atomic_output_dir``): an interrupted
    save leaves ``DIR`` as it was.
    """
    import orbax.checkpoint as ocp

    from vlscale.runtime.files import atomic_output_dir

    directory = Path(directory).absolute()
    tree = unstack_layers(_to_plain_dict(params))
    with atomic_output_dir(directory, owned=(PARAMS_SUBDIR, METADATA_FILE)) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_SUBDIR, tree, force=True)
            ckptr.wait_until_finished()
        meta = {"format": FORMAT_VERSION, "model": model_name}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return directory


def load_params(directory: str | Path, scan_layers: bool = False) -> tuple[dict, dict]:
    """(params as numpy, metadata) from ``save_params``'s directory, in the requested layer layout."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    meta_path = directory / METADATA_FILE
    if not meta_path.is_file():
        raise UserError(f"{directory} is not a vlscale checkpoint (no {METADATA_FILE}); "
                        "create one with `vlscale convert --from-open-clip FILE --model NAME --out DIR`")
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), str):
            raise ValueError("no model name")
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{meta_path} is not valid vlscale checkpoint metadata ({_reason(e)})") from None
    if not (directory / PARAMS_SUBDIR).is_dir():
        raise UserError(f"{directory} is not a complete vlscale checkpoint (no {PARAMS_SUBDIR}/ folder)")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(directory / PARAMS_SUBDIR)
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        raise UserError(f"cannot restore the parameters in {directory / PARAMS_SUBDIR} ({_reason(e)})") from None
    import jax

    tree = jax.tree.map(np.asarray, _to_plain_dict(tree))
    return to_layout(tree, meta["model"], scan_layers), meta


def _to_plain_dict(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _to_plain_dict(v) for k, v in tree.items()}
    return tree


def from_open_clip(path: str | Path, model_name: str, scan_layers: bool = False, *, trust_pickle: bool = False) -> dict:
    """Reads an open_clip / MaMMUT checkpoint file into Flax parameters for ``model_name`` (see
    ``load_state_dict_file`` for ``trust_pickle``)."""
    return torch_to_flax(load_state_dict_file(path, trust_pickle=trust_pickle), model_name, scan_layers=scan_layers)
