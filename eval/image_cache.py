"""Eval images decoded and resized once per process, and, with a cache folder, once per machine.

A study evaluates checkpoint after checkpoint on the same datasets, and the eval transform's output depends only on
the image files, the image size and the code that decodes and resizes. This module keeps that output under a key made
of exactly those, so the second checkpoint reads pixels instead of decoding files:

- the set's *source*: its spec plus the path, size and modification time of every file its images come from (set
  by the dataset modules, ``source_of_files``), so a file replaced under the same path is a new key; a set whose
  files cannot be stamped (object storage, a test's fake reader) has no source and is not cached;
- the image size, the hash of the modules that decide the pixels (and labels read with them), Pillow's version;
- this host's share when several processes evaluate (each host loads and keeps only its rows).

What is kept is the uint8 output of the resize and centre crop; the loader normalises each batch with
``vlscale.data.normalize.normalize_host``, which equals the float32 eval transform bit for bit, at a quarter of the
memory. Rows are filled as batches are first decoded (the first checkpoint's pass still overlaps decoding with the
device) and a ``filled`` mask says which ones are there.

In this process: a memo of at most ``MEMO_BYTES`` of pixels held in memory, least recently used dropped first; a set
larger than that is not kept (it is decoded again per checkpoint, as without the cache) unless a cache folder is set.
On disk, when ``$VLSCALE_EVAL_CACHE`` names a local folder: ``<key>.npy`` (the pixels, memory-mapped, so a set of any
size costs page cache rather than process memory) and ``<key>.npz`` (filled, decodable, labels), written once this
host has every row it loads; a new process reads them instead of decoding. Unset (the default): memory only; ``none``
turns the cache off.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
CACHE_ENV = "VLSCALE_EVAL_CACHE"
# Pixels kept in this process's memory: ImageNet-1k val at 224 px is 7.5 GB of uint8, COCO's 5k test images 0.75 GB.
MEMO_BYTES = 4 << 30
MEMO_ENTRIES = 64  # memory-mapped sets cost no process memory; this bounds their count
# The eval modules that decide a cached set's pixels and the labels read with them (with models/transforms.py).
CODE_FILES = ("image_sets.py", "image_cache.py", "file_sets.py", "tfds_sets.py", "wds_sets.py",
              "imagenet_layouts.py", "prompts.py")

_LOCK = threading.Lock()
_MEMO: OrderedDict[str, "Pixels"] = OrderedDict()


def file_stamp(path: str | os.PathLike) -> list | None:
    """[path, size, mtime_ns] of a local file ([path, None, None] if it is missing); None for an object-store path."""
    path = os.fspath(path)
    if "://" in path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return [path, None, None]  # unreadable now: its rows are counted as undecodable, and a new file is a new key
    return [path, st.st_size, st.st_mtime_ns]


def source_of_files(spec: str, paths: Iterable[str | os.PathLike], **extra) -> str | None:
    """The source of a set whose images come from ``paths`` (in row order), or None when one cannot be stamped."""
    stamps = []
    for p in paths:
        stamp = file_stamp(p)
        if stamp is None:
            return None
        stamps.append(stamp)
    what = {"spec": spec, "files": stamps, **extra}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


@functools.cache
def code_hash() -> str:
    """Hash of the modules that decide the cached pixels and labels, and the Pillow version that resizes."""
    import PIL

    from vlscale.models import transforms

    h = hashlib.sha256(PIL.__version__.encode())
    for path in [Path(transforms.__file__)] + [Path(__file__).parent / name for name in CODE_FILES]:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cache_folder() -> Path | None:
    """``$VLSCALE_EVAL_CACHE`` as a folder; None when it is unset, empty, ``none`` or not a local path."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    if not raw or raw.lower() == "none":
        return None
    if "://" in raw:
        log.warning("%s=%s: the eval image cache needs a local folder (it memory-maps its files); not used",
                    CACHE_ENV, raw)
        return None
    return Path(os.path.expanduser(raw))


def enabled() -> bool:
    return os.environ.get(CACHE_ENV, "").strip().lower() != "none"


def cache_key(source: str, num_images: int, image_size: int, process_index: int = 0, process_count: int = 1) -> str:
    what = {"format": CACHE_FORMAT, "code": code_hash(), "source": source, "n": int(num_images),
            "size": int(image_size), "host": [int(process_index), int(process_count)] if process_count > 1 else None}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class Pixels:
    """One set at one image size on this host: uint8 pixels, which rows are filled, decodable, and their labels."""

    key: str
    images: np.ndarray  # uint8 [N, S, S, 3]
    ok: np.ndarray  # bool [N]: the image decoded
    labels: np.ndarray  # int32 [N]: a label read with the image (TFDS), -1 when none
    filled: np.ndarray  # bool [N]: the row has been decoded (ok or not)
    folder: Path | None = None  # where it is written once complete (None: memory only, or already written)
    partial: Path | None = None  # the memory-mapped file being filled, published under the key when complete

    @property
    def writable(self) -> bool:
        return bool(self.images.flags.writeable)

    @property
    def resident_bytes(self) -> int:
        return 0 if isinstance(self.images, np.memmap) else int(self.images.nbytes)

    def store(self, rows: np.ndarray, decoded: list) -> None:
        """Keeps ``decoded[k]`` = (uint8 pixels or None, label or None) as row ``rows[k]``."""
        if not self.writable:
            return
        for i, (px, label) in zip(rows, decoded):
            if px is not None:
                self.images[i] = px
            self.ok[i] = px is not None
            self.labels[i] = -1 if label is None else int(label)
            self.filled[i] = True

    def complete(self, needed: np.ndarray) -> None:
        """Called after each batch with every row this host loads: once all are filled, writes the set to disk."""
        if self.folder is None or not self.filled[needed].all():
            return
        folder, self.folder = self.folder, None
        _save(self, folder)


def lookup(source: str | None, num_images: int, image_size: int) -> Pixels | None:
    """This host's cached pixels for a set (from this process, then the cache folder, else new and empty), or None
    when the set is not cacheable (no source, cache off, or larger than the memo without a cache folder)."""
    if source is None or not enabled():
        return None
    import jax

    key = cache_key(source, num_images, image_size, jax.process_index(), jax.process_count())
    with _LOCK:
        if key in _MEMO:
            _MEMO.move_to_end(key)
            return _MEMO[key]
    folder = cache_folder()
    entry = _load(key, folder, num_images, image_size) if folder is not None else None
    if entry is None:
        entry = _new(key, num_images, image_size, folder)
    if entry is not None:
        _remember(entry)
    return entry


def _new(key: str, n: int, size: int, folder: Path | None) -> Pixels | None:
    shape = (n, size, size, 3)
    meta = dict(ok=np.zeros(n, bool), labels=np.full(n, -1, np.int32), filled=np.zeros(n, bool))
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / f".{key}.partial-{os.getpid()}-{threading.get_ident()}.npy"
            images = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
        except OSError as e:  # an unwritable folder costs the disk copy, nothing more
            log.warning("eval image cache: cannot write in %s (%s); keeping images in memory only", folder, e)
        else:
            entry = Pixels(key, images, folder=folder, partial=partial, **meta)
            weakref.finalize(entry, _unlink, partial)  # an abandoned fill leaves no file behind
            return entry
    if np.prod(shape) > MEMO_BYTES:
        return None
    return Pixels(key, np.zeros(shape, np.uint8), **meta)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _paths(folder: Path, key: str) -> tuple[Path, Path]:
    return folder / f"{key}.npy", folder / f"{key}.npz"


def _load(key: str, folder: Path, n: int, size: int) -> Pixels | None:
    pixels_path, meta_path = _paths(folder, key)
    if not (pixels_path.is_file() and meta_path.is_file()):
        return None
    try:
        images = np.load(pixels_path, mmap_mode="r")
        with np.load(meta_path) as z:
            ok, labels, filled = z["ok"], z["labels"], z["filled"]
        if images.shape != (n, size, size, 3) or images.dtype != np.uint8 or ok.shape != (n,):
            raise ValueError(f"shape {images.shape} does not match {n} images of {size} px")
    except (OSError, ValueError, KeyError) as e:  # a damaged file is decoded again, not a crash
        log.warning("eval image cache: ignoring %s (%s)", pixels_path, e)
        return None
    return Pixels(key, images, ok.astype(bool), labels.astype(np.int32), filled.astype(bool))


def _save(entry: Pixels, folder: Path) -> None:
    """Writes the metadata, then publishes the filled pixel file under its key (readers need both)."""
    from vlscale.runtime import files

    pixels_path, meta_path = _paths(folder, entry.key)
    try:
        with files.atomic_path(meta_path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, ok=entry.ok, labels=entry.labels, filled=entry.filled)
        entry.images.flush()
        with files.atomic_path(pixels_path) as tmp:
            os.replace(entry.partial, tmp)  # the mapping stays valid: it follows the file, not its name
        entry.partial = None
    except OSError as e:
        log.warning("eval image cache: could not write %s (%s)", pixels_path, e)


def _remember(entry: Pixels) -> None:
    with _LOCK:
        _MEMO[entry.key] = entry
        _MEMO.move_to_end(entry.key)
        while len(_MEMO) > 1 and (len(_MEMO) > MEMO_ENTRIES
                                  or sum(e.resident_bytes for e in _MEMO.values()) > MEMO_BYTES):
            _MEMO.popitem(last=False)


def clear_memo() -> None:
    with _LOCK:
        _MEMO.clear()
