"""Webdataset tar shards: a sequential per-shard reader, a checkpointable shard interleaver, and a writer.

The format is what img2dataset writes for LAION, DataComp and DFN: consecutive tar members that share
a key (the file name up to its first dot) form one sample, e.g. ``000123.jpg`` + ``000123.txt`` +
``000123.json``. Grain has no tar reader, so this module streams shards directly instead of converting
them to ArrayRecord: reading is sequential and costs a small fraction of JPEG decoding (see
docs/data.md for the measurement), so a conversion pass would buy little and double the disk.

The reader never raises on bad input. A shard that cannot be opened or a tar that ends mid-member
yields a record ``{"__bad__": reason, ...}`` which the decode stage counts (see ``samples.py``).
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

log = logging.getLogger(__name__)

BAD_KEY = "__bad__"
# Reasons a reader emits itself; decode-time reasons live in samples.py.
UNREADABLE_SHARD = "unreadable_shard"
TRUNCATED_TAR = "truncated_tar"


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/000123.jpg`` -> (``dir/000123``, ``jpg``); the extension is everything after the first dot."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, ext.lower() if dot else ""


BLOCK = 512
_READ_BUFFER = 1 << 20  # shards are read front to back; a large buffer keeps syscalls few


class TarFormatError(Exception):
    """A header that is not a tar header, or data that ends early."""


def _octal(field: bytes) -> int:
    field = field.rstrip(b"\0 ").lstrip(b" ")
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    return int(field, 8) if field else 0


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header, if any (records are ``"<len> key=value\\n"``)."""
    pos = 0
    found = None
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        if key == b"path":
            found = value.decode("utf-8", "surrogateescape")
        pos += length
    return found


def iter_tar_members(f, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes | None]]:
    """Yields ``(name, data)`` for the regular files of a tar stream; ``data`` is None when ``want(name)``
    is false (the bytes are seeked over, not read).

    A minimal ustar/pax/GNU reader: python's ``tarfile`` parses each header field in Python and keeps
    every member object, which made header parsing a visible share of the per-sample cost on small
    images (see docs/data.md). Raises ``TarFormatError`` on a bad checksum or data that ends early.
    """
    long_name = None
    while True:
        header = f.read(BLOCK)
        if len(header) < BLOCK:
            if header.strip(b"\0"):
                raise TarFormatError("header cut short")
            return  # a tar without the end-of-archive blocks ends here too
        if header == b"\0" * BLOCK:
            return
        stored = _octal(header[148:156])
        if stored != sum(header[:148]) + 256 + sum(header[156:]):  # checksum field counts as spaces
            raise TarFormatError("bad header checksum")
        size = _octal(header[124:136])
        kind = header[156:157]
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        if kind in (b"x", b"L"):  # pax / GNU long name for the next member
            data = f.read(padded)
            if len(data) < padded:
                raise TarFormatError("extended header cut short")
            data = data[:size]
            long_name = _pax_path(data) if kind == b"x" else data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if long_name is not None:
            name, long_name = long_name, None
        else:
            name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            prefix = header[345:500].split(b"\0", 1)[0]
            if prefix and header[257:262] == b"ustar":
                name = prefix.decode("utf-8", "surrogateescape") + "/" + name
        if kind not in (b"0", b"\0", b"7") or not want(name):
            if padded:
                f.seek(padded, 1)
            if kind in (b"0", b"\0", b"7"):
                yield name, None
            continue
        data = f.read(padded)
        if len(data) < size:
            raise TarFormatError(f"member {name} cut short")
        yield name, data[:size]


def open_shard(path: str):
    """A shard opened for reading: a local file with a large buffer, an object-store URL (``gs://...``) through
    ``etils.epath`` (``runtime.paths.resolve``)."""
    if "://" in path:
        from vlscale.runtime import paths

        return paths.resolve(path).open("rb")
    return open(path, "rb", buffering=_READ_BUFFER)


def iter_tar_samples(path: str, skip: int = 0) -> Iterator[dict[str, Any]]:
    """Yields the samples of one shard in order, after skipping the first ``skip`` records.

    Each record is ``{"__key__", "__url__", ext: bytes, ...}`` or a bad record. Every yielded record
    (good or bad) counts as one toward ``skip``, so a position saved as "records yielded" resumes exactly.
    Members of skipped samples are seeked over, not read.
    """
    emitted = 0

    def emit(record):
        nonlocal emitted
        emitted += 1
        return emitted > skip

    f = None
    try:
        f = open_shard(path)
        head = f.read(BLOCK)
        f.seek(0)
        if len(head) < BLOCK or (head.strip(b"\0") and not _octal_checksum_ok(head)):
            raise TarFormatError("not a tar file")
    except (OSError, TarFormatError, ValueError) as e:
        if f is not None:
            f.close()
        log.warning("skipping shard %s: cannot open it (%s)", path, e)
        rec = {BAD_KEY: UNREADABLE_SHARD, "__url__": path, "__key__": ""}
        if emit(rec):
            yield rec
        return
    current: dict[str, Any] | None = None
    state = {"groups": 0, "key": None}  # samples started so far; the current one has index groups - 1

    def want(name: str) -> bool:
        key = split_member_name(name)[0]
        index = state["groups"] if key != state["key"] else state["groups"] - 1
        return index >= skip

    with f:
        members = iter_tar_members(f, want)
        while True:
            try:
                item = next(members, None)
            except (OSError, TarFormatError, ValueError) as e:
                log.warning("shard %s ends early (%s); later samples in it are lost", path, e)
                if current is not None and emit(current):
                    yield current
                rec = {BAD_KEY: TRUNCATED_TAR, "__url__": path, "__key__": current["__key__"] if current else ""}
                if emit(rec):
                    yield rec
                return
            if item is None:
                break
            name, payload = item
            key, ext = split_member_name(name)
            if current is None or current["__key__"] != key:
                if current is not None and emit(current):
                    yield current
                current = {"__key__": key, "__url__": path}
                state["groups"] += 1
                state["key"] = key
            if ext:
                current[ext] = payload
        if current is not None and emit(current):
            yield current


def _octal_checksum_ok(header: bytes) -> bool:
    try:
        return _octal(header[148:156]) == sum(header[:148]) + 256 + sum(header[156:])
    except ValueError:
        return False


def write_tar_sample(tar: tarfile.TarFile, key: str, fields: Mapping[str, bytes | str]) -> None:
    """Appends one sample (``key.ext`` members) with fixed metadata so equal inputs give equal bytes."""
    for ext, value in fields.items():
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uname = info.gname = "vlscale"
        tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """Writes samples into ``pattern % shard_index`` tar files, ``samples_per_shard`` to a shard."""

    def __init__(self, pattern: str, samples_per_shard: int):
        if "%" not in pattern:
            raise ValueError(f"shard pattern {pattern!r} needs a %-format for the shard index, e.g. 'out/%05d.tar'")
        self.pattern = pattern
        self.samples_per_shard = samples_per_shard
        self.paths: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def write(self, key: str, fields: Mapping[str, bytes | str]) -> None:
        if self._tar is None or self._count >= self.samples_per_shard:
            self._roll()
        write_tar_sample(self._tar, key, fields)
        self._count += 1

    def _roll(self) -> None:
        self.close()
        path = self.pattern % len(self.paths)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        # Write to a temporary name and rename, so a crash never leaves a plausible-looking partial shard.
        self._tar = tarfile.open(path + ".tmp", mode="w", format=tarfile.USTAR_FORMAT)
        self.paths.append(path)
        self._count = 0

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            os.replace(self.paths[-1] + ".tmp", self.paths[-1])
            self._tar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """A permutation of ``num_shards`` for ``epoch``: fresh per epoch, fixed by the seed (identity unshuffled)."""
    if not shuffle:
        return np.arange(num_shards)
    return np.random.default_rng([seed, epoch, 0x5A4D]).permutation(num_shards)


def balanced_epoch_length(num_shards: int, readers: int) -> int:
    """Shard visits per epoch over all readers (hosts x workers) of an endless stream: ``readers * (num_shards //
    readers)``, so that every reader reads the same number of shards.

    With a fixed split ``shards[i::n]``, 1000 shards over 256 hosts give 4 to some hosts and 3 to others, and in
    an endless stream a host with 3 reads each of them a third more often. The shards an epoch leaves out rotate
    (``balanced_epoch_window``), so in the long run each shard is read equally often. With fewer shards than
    readers each reader still gets one per epoch, and some shards are read twice in that epoch.
    """
    return readers * max(1, num_shards // readers)


def balanced_epoch_window(num_shards: int, readers: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The shard indices of ``epoch`` of an endless stream; reader ``r`` reads ``window[r::readers]``.

    The window is the next ``balanced_epoch_length`` shards of the shard list read as a ring (epoch ``e`` starts
    at ``e * length mod num_shards``), shuffled by ``shard_order``: a seeded global permutation per epoch, the
    same on every host.
    """
    length = balanced_epoch_length(num_shards, readers)
    ring = ((epoch * length) + np.arange(length)) % num_shards
    return ring[shard_order(length, seed, epoch, shuffle)]


class ShardInterleaveIterDataset(grain.IterDataset):
    """Streams samples from tar shards: ``cycle_length`` shards open at once, read round-robin.

    The shard list is global (every host passes the same one). The readers are the hosts times grain's
    worker processes (``set_slice`` tells a worker its index). Which shards a reader reads in an epoch:

    * endless stream (``num_epochs=None``, training): reader ``r`` of ``R`` reads
      ``balanced_epoch_window(...)[r::R]``, the same number of shards as every other reader;
    * finite pass (evaluation): each shard exactly once per epoch, reader shares fixed (host ``i`` of ``n``
      reads ``shards[i::n]``, its worker ``w`` of ``W`` every ``W``-th of those), in a per-epoch order.

    A reader visits its shards as one endless sequence of positions ``p`` (epoch ``p // k``, its
    ``p % k``-th shard of that epoch, ``k`` shards per epoch), so epochs follow each other without a
    drain. The iterator state is a few integers (next position, each open slot's position and records
    read, round-robin pointer, plus ``k`` and the epoch for ``elastic_state``), which makes it
    JSON-serialisable and exact on the same topology: restoring reopens the slots' shards and skips the
    records already read.
    """

    def __init__(
        self,
        shards: Sequence[str],
        *,
        seed: int = 0,
        shuffle: bool = True,
        cycle_length: int = 4,
        num_epochs: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ):
        super().__init__()
        self._shards = list(shards)
        self._seed = seed
        self._shuffle = shuffle
        self._cycle_length = max(1, cycle_length)
        self._num_epochs = num_epochs
        self._process_index, self._process_count = process_index, process_count
        self._worker, self._workers = 0, 1

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Worker ``sl.start`` of ``sl.step`` (grain's ``mp_prefetch``) becomes a reader of its own."""
        del sequential_slice  # Shards are already the unit of locality.
        worker, workers = sl.start or 0, sl.step or 1
        if sl.stop is not None or not 0 <= worker < workers:
            raise ValueError(f"ShardInterleaveIterDataset takes slices worker::workers, not {sl}")
        self._worker, self._workers = worker, workers

    @property
    def reader(self) -> tuple[int, int]:
        """(this reader's index, number of readers): hosts x workers, host-major."""
        return self._process_index * self._workers + self._worker, self._process_count * self._workers

    @property
    def shards(self) -> list[str]:
        """The global shard list (every reader draws its shares from it, epoch by epoch)."""
        return list(self._shards)

    def _fixed_share(self) -> np.ndarray:
        return np.arange(len(self._shards))[self._process_index :: self._process_count][self._worker :: self._workers]

    @property
    def shards_per_epoch(self) -> int:
        """How many shards this reader reads in each epoch."""
        if self._num_epochs is not None:
            return len(self._fixed_share())
        _, count = self.reader
        return balanced_epoch_length(len(self._shards), count) // count

    def epoch_shards(self, epoch: int) -> np.ndarray:
        """Indices into ``shards`` of what this reader reads in ``epoch``, in reading order."""
        if self._num_epochs is not None:
            share = self._fixed_share()
            return share[shard_order(len(share), self._seed, epoch, self._shuffle)]
        r, count = self.reader
        return balanced_epoch_window(len(self._shards), count, self._seed, epoch, self._shuffle)[r::count]

    def __iter__(self) -> "_ShardInterleaveIterator":
        return _ShardInterleaveIterator(self)

    def __str__(self) -> str:
        r, count = self.reader
        return f"ShardInterleaveIterDataset(num_shards={len(self._shards)}, reader={r}/{count}, " \
               f"cycle_length={self._cycle_length})"


class _ShardInterleaveIterator(grain.DatasetIterator):
    def __init__(self, ds: ShardInterleaveIterDataset):
        super().__init__()
        self._ds = ds
        self._k = ds.shards_per_epoch
        self._windows: dict[int, np.ndarray] = {}
        self._set_positions(next_pos=0, slots=[], rr=0)

    def _total_positions(self) -> float:
        return float("inf") if self._ds._num_epochs is None else self._k * self._ds._num_epochs

    def _shard_at(self, pos: int) -> str:
        epoch, j = divmod(pos, self._k)
        if epoch not in self._windows:
            self._windows = {epoch: self._ds.epoch_shards(epoch)}
        return self._ds._shards[int(self._windows[epoch][j])]

    def _set_positions(self, next_pos: int, slots: list, rr: int) -> None:
        self._next_pos = next_pos
        self._slots = [[int(p), int(off)] for p, off in slots]
        self._readers = [iter_tar_samples(self._shard_at(p), skip=off) for p, off in self._slots]
        self._rr = rr
        self._fill()

    def _fill(self) -> None:
        while len(self._slots) < self._ds._cycle_length and self._next_pos < self._total_positions() and self._k:
            p = self._next_pos
            self._next_pos += 1
            self._slots.append([p, 0])
            self._readers.append(iter_tar_samples(self._shard_at(p)))

    def __next__(self) -> dict[str, Any]:
        while self._slots:
            k = self._rr % len(self._slots)
            try:
                rec = next(self._readers[k])
            except StopIteration:
                # Replace the finished slot in place so the round-robin order of the others is kept.
                del self._slots[k], self._readers[k]
                if self._next_pos < self._total_positions() and self._k:
                    p = self._next_pos
                    self._next_pos += 1
                    self._slots.insert(k, [p, 0])
                    self._readers.insert(k, iter_tar_samples(self._shard_at(p)))
                continue
            self._slots[k][1] += 1
            self._rr = (k + 1) % len(self._slots)
            return rec
        raise StopIteration

    def get_state(self) -> dict[str, Any]:
        # Not needed to restore on the same topology: elastic_state reads shards_per_epoch, and epoch (that of the
        # next shard to open) is for people reading a checkpoint.
        return {"next_pos": self._next_pos, "slots": [list(s) for s in self._slots], "rr": self._rr,
                "shards_per_epoch": self._k, "epoch": self._next_pos // self._k if self._k else 0}

    def set_state(self, state: dict[str, Any]) -> None:
        if "next_pos" not in state:  # elastic_state's form: the start of an epoch, for this reader's share
            self._set_positions(int(state[START_EPOCH]) * self._k, [], 0)
            return
        self._set_positions(int(state["next_pos"]), state["slots"], int(state["rr"]))

    def __str__(self) -> str:
        return f"_ShardInterleaveIterator(next_pos={self._next_pos})"


START_EPOCH = "start_epoch"
_LEAF_KEYS = ("next_pos", "slots", "rr")
_WINDOW_START = "parent_window_start_state"  # grain WindowShuffleIterDataset's saved parent state


def _is_leaf_state(node: Any) -> bool:
    return isinstance(node, Mapping) and all(k in node for k in _LEAF_KEYS)


def _leaf_states(node: Any, windowed: bool = False) -> Iterator[tuple[Mapping[str, Any], bool]]:
    """Every ``_ShardInterleaveIterator`` state inside a (nested, JSON-like) grain pipeline state, each with
    whether it is a window shuffle's window-start state (grain's ``parent_window_start_state``)."""
    if _is_leaf_state(node):
        yield node, windowed
    elif isinstance(node, Mapping):
        for k, v in node.items():
            yield from _leaf_states(v, windowed or k == _WINDOW_START)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _leaf_states(v, windowed)


def _replace_leaves(node: Any, leaf: Mapping[str, Any]) -> Any:
    if _is_leaf_state(node):
        return dict(leaf)
    if isinstance(node, Mapping):
        return {k: _replace_leaves(v, leaf) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_leaves(v, leaf) for v in node]
    return node


def resume_epoch(saved_states: Sequence[Mapping[str, Any]]) -> int | None:
    """The first epoch no saved reader can have opened a shard of; None when the states hold no shard stream.

    A reader's ``next_pos`` is the next shard position it would open, so it has opened shards of epochs up to
    ``ceil(next_pos / k) - 1``. Behind a grain window shuffle the saved state is the one at the window's start,
    and the window is read again on restore, so the reader may also have opened position ``next_pos``: then
    epoch ``next_pos // k`` counts as started (this assumes one window holds fewer records than a shard).
    The answer is the largest such bound over all readers.
    """
    epochs = []
    for state in saved_states:
        for leaf, windowed in _leaf_states(state.get("grain", state) if isinstance(state, Mapping) else state):
            k = int(leaf.get("shards_per_epoch", 0))
            if k < 1:
                raise ValueError("a shard-stream state without shards_per_epoch (saved before elastic resume "
                                 "existed, or by a reader with no shards) cannot be resumed on another topology")
            pos = int(leaf["next_pos"])
            epochs.append(pos // k + 1 if windowed else -(-pos // k))
    return max(epochs) if epochs else None


def elastic_state(saved_states: Sequence[Mapping[str, Any]], fresh_state: Mapping[str, Any]) -> dict | None:
    """The grain state that resumes a webdataset stream on another topology, or None for other sources.

    ``saved_states``: the saved iterator states of *every* process of the checkpoint (each a
    ``DataIterator.state_dict()`` with its ``"grain"`` entry, or the grain states themselves), written with
    any process count P and worker count W. ``fresh_state``: ``get_state()`` of the new process's grain
    iterator, built for the new topology (P', W') and not yet advanced. Returns ``fresh_state`` with every
    shard-stream leaf replaced by ``{"start_epoch": S}`` (``resume_epoch``); pass it to the new iterator's
    ``set_state``. Every new process computes the same ``S`` from the same saved states, so all new readers
    start together at the first shard of epoch ``S`` of the new topology, and from there the stream is the one
    an uninterrupted run on the new topology reads from epoch ``S``.

    The bound: the old run's last, interrupted epoch is not finished, and the new run does not start it again,
    so no sample is read twice within an epoch, and each shard is read at most once less than in an
    uninterrupted run. Skipped are the unread rest of that epoch (each reader's open slots and not yet opened
    shards, at most one epoch) and the records held in shuffle buffers and prefetch queues; plus one whole epoch
    when a shuffle window's saved start sat exactly on an epoch boundary of the most advanced reader (see
    ``resume_epoch``). ``samples_seen`` and the learning-rate schedule are not affected: they count steps.

    Use it only when the topology changed: on the same P and W, restoring the saved state itself is exact.
    Returns None when neither the saved states nor ``fresh_state`` contain a shard stream (a random-access
    source); raises ``ValueError`` when only one side does.
    """
    start = resume_epoch(saved_states)
    has_fresh = any(True for _ in _leaf_states(fresh_state))
    if start is None and not has_fresh:
        return None
    if start is None or not has_fresh:
        raise ValueError("elastic_state: the saved states and the new pipeline disagree on whether the data is a "
                         "shard stream")
    return _replace_leaves(fresh_state, {START_EPOCH: start})
