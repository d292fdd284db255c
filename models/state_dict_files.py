"""Reading and writing open_clip state-dict files: ``.safetensors``, ``.npz`` (no pickles), torch ``.pt`` (a
weights-only load unless the user trusts the file)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vlscale.errors import UserError

TORCH_HINT = "install torch (pip install 'vlscale[torch]') to read .pt files; .safetensors needs no torch"


def error_summary(e: BaseException) -> str:
    """The informative line of a loader's error (torch's messages run over many lines)."""
    text = str(e)
    m = re.search(r"(Unsupported global: GLOBAL \S+|unsupported GLOBAL \S+)", text)
    if m:
        return m.group(1)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else type(e).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def to_numpy(v: Any) -> np.ndarray:
    """A numpy array for a numpy array, a torch tensor (bfloat16 as float32) or anything ``np.asarray`` takes."""
    if isinstance(v, np.ndarray):
        return v
    if hasattr(v, "detach"):  # torch tensor; bf16 has no numpy dtype
        t = v.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return np.asarray(v)


def contiguous_float32(a: Any) -> np.ndarray:
    """A C-contiguous float32 copy that keeps 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
    return np.array(a, dtype=np.float32, order="C", copy=True)


def _torch_load(path: Path, trust_pickle: bool):
    import pickle

    import torch

    try:
        # weights_only: the unpickler accepts tensors, containers and plain values only and never runs code
        # from the file; open_clip / MaMMUT checkpoints (state dict, epoch, optimizer state) load this way.
        return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if not trust_pickle and "weights only" in str(e).lower():
            raise UserError(f"{path}: refused to unpickle ({error_summary(e)}): a weights-only load allows tensors and "
                            "plain values, never code; if you trust where this file came from, pass "
                            "--trust-pickle (see docs/security.md)") from None
        raise UserError(f"{path} is not a readable torch checkpoint ({error_summary(e)})") from None
    except Exception as e:  # noqa: BLE001 - unpickling arbitrary bytes raises nearly any type
        # Text/CSV files (KeyError, IndexError), truncated zips (RuntimeError), classes that do not exist here.
        raise UserError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: {error_summary(e)})") from None


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
            raise UserError(f"{path} is not a readable .safetensors file ({error_summary(e)})") from None
    if suffix == ".npz":
        import zipfile

        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f"{path} is not a readable .npz file ({error_summary(e)})") from None
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise UserError(f"cannot read {path}: {TORCH_HINT}") from e
    obj = _torch_load(path, trust_pickle)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict or {{'state_dict': ...}}")
    tensors = {k: to_numpy(v) for k, v in obj.items() if hasattr(v, "shape")}
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
            save_file({k: contiguous_float32(v) for k, v in state_dict.items()}, str(tmp))
        return path
    try:
        import torch
    except ImportError as e:
        raise UserError(f"cannot write {path}: install torch (pip install 'vlscale[torch]') to write .pt files, "
                        "or write .safetensors") from e
    with atomic_path(path) as tmp:
        torch.save({k: torch.from_numpy(contiguous_float32(v)) for k, v in state_dict.items()}, str(tmp))
    return path
