"""Rendered in-memory synthetic sets, kept so a study renders each set once.

The CPU scaling demo trains many tiny runs on the same in-memory synthetic set, and drawing it is most of
a small run's start-up (docs/data.md has the numbers). The arrays are a pure function of the generator
config, the seed, the sample count, the host share and the preprocessing code, so they are cached under
a key made of exactly those: in this process (the study calls the trainer in-process) and as an ``.npz``
in a cache folder (later processes). The code is part of the key, by the hash of the files that draw,
resize and tokenise, so editing the generator never serves stale pixels.

Only the synthetic source is cached: files behind the other sources can change under the same path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from vlscale.runtime import files

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
MEMO_ENTRIES = 2  # arrays kept in this process (a 20k x 32 px set is about 60 MB)
CACHE_ENV = "VLSCALE_DATA_CACHE"
_MEMO: OrderedDict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()


# The data modules that decide the pixels and tokens of an in-memory synthetic set (read as files: importing
# them here would make a cycle, since in_memory uses this cache).
CODE_FILES = ("synth.py", "synth_scene.py", "synth_render.py", "synth_captions.py", "records.py", "decode.py",
              "in_memory.py")


def _code_hash() -> str:
    """Hash of the modules that decide the pixels and tokens of an in-memory synthetic set."""
    from vlscale.models import tokenizer, transforms

    h = hashlib.sha256()
    here = Path(__file__).parent
    for path in [here / name for name in CODE_FILES] + [Path(transforms.__file__), Path(tokenizer.__file__)]:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cache_key(config, process_index: int, process_count: int) -> str | None:
    """The key of this host's in-memory set, or None when the source is not cacheable (not synthetic)."""
    if str(config.source) != "synth":
        return None
    from vlscale.data.identity import synth_knobs

    what = {"format": CACHE_FORMAT, "code": _code_hash(), "synth_seed": int(config.synth.seed),
            "split": str(config.synth.split), "knobs": synth_knobs(config), "samples": int(config.in_memory_samples),
            "image_size": int(config.image_size), "context_length": int(config.context_length),
            "host": [int(process_index), int(process_count)]}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def cache_dir(config) -> Path | None:
    """``config.cache_dir``; "" means $VLSCALE_DATA_CACHE or the user cache folder, "none" turns it off."""
    raw = str(config.get("cache_dir", "") or "")
    if raw.lower() == "none":
        return None
    if not raw:
        raw = os.environ.get(CACHE_ENV, "")
    if not raw:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        raw = os.path.join(base, "vlscale", "data")
    return Path(os.path.expanduser(raw))


def _readonly(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.flags.writeable = False  # shared between iterators of this process: nobody may edit them
    return arrays


def load(key: str, folder: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The cached arrays for ``key`` (this process first, then the folder), or None."""
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    if folder is None:
        return None
    path = folder / f"synth-{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            arrays = _readonly(z["images"], z["tokens"], z["skipped"])
    except (OSError, ValueError, KeyError) as e:  # a damaged file is re-rendered, not a crash
        log.warning("ignoring unreadable data cache %s (%s)", path, e)
        return None
    remember(key, arrays)
    return arrays


def remember(key: str, arrays: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    _MEMO[key] = arrays
    _MEMO.move_to_end(key)
    while len(_MEMO) > MEMO_ENTRIES:
        _MEMO.popitem(last=False)


def save(key: str, folder: Path | None, arrays: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Keeps the arrays in this process and, when a folder is set, writes them atomically (rename)."""
    arrays = _readonly(*arrays)
    remember(key, arrays)
    if folder is None:
        return
    try:
        with files.atomic_path(Path(folder) / f"synth-{key}.npz") as tmp:  # readers see a whole file or none
            with open(tmp, "wb") as f:
                np.savez(f, images=arrays[0], tokens=arrays[1], skipped=arrays[2])
    except OSError as e:  # a read-only or full disk costs a re-render next time, nothing more
        log.warning("could not write the data cache in %s (%s)", folder, e)


def clear_memo() -> None:
    _MEMO.clear()
