"""``DataIterator``: host batches from the pipeline with exact accounting, the bad-data guard and checkpointable state."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from vlscale.data import hosts
from vlscale.data import identity as identity_lib
from vlscale.data import samples as samples_lib
from vlscale.data.config_fields import per_host_batch_size, process_index_and_count, with_overrides, worker_count
from vlscale.data.pipeline import build_dataset, in_global_order
from vlscale.errors import UserError
from vlscale.runtime.checkpoint import NeedsAllHosts

STATE_VERSION = 3  # 3: global sample order (position = samples seen); 2 added the fingerprint, workers, host batch
DEVICE_KEYS = ("image", "text")  # what goes onto the mesh; bookkeeping stays on the host


class DataIterator:
    """Host batches with exact accounting, the bad-data guard, timing and checkpointable state.

    ``next(it)`` returns ``{"image": [b,H,W,3], "text": int32 [b,ctx]}`` for this host (``image`` uint8 by
    default, normalised on the device with ``normalize_images``; float32 with ``image_dtype="float32"``);
    ``global_batch(sharding)`` returns the next batch as global ``jax.Array``s laid out by ``sharding``.
    ``get_state``/``set_state`` speak JSON bytes so ``grain.checkpoint.CheckpointSave(it)`` writes one
    file per host into an Orbax checkpoint (``state_dict`` gives the same state as a dict). The state
    carries ``samples_seen`` and the data ``fingerprint()``: a restore continues the count and refuses
    other data.

    Multi-host: call ``check_bad_fraction()`` on every host at the same steps (the trainer: every log
    step), and use ``padded_batches()`` for finite passes; see those methods.
    """

    def __init__(self, config, *, process_index: int | None = None, process_count: int | None = None):
        if process_index is not None:
            config = with_overrides(config, process_index=process_index, process_count=process_count)
        self.config = config
        self.process_index, self.process_count = process_index_and_count(config)
        self.global_batch_size = int(config.batch_size)
        self.host_batch_size = per_host_batch_size(self.global_batch_size, self.process_count)
        self.image_dtype = str(config.get("image_dtype", "uint8"))
        self._in_memory = bool(config.get("in_memory", False))
        self.worker_count = 0 if self._in_memory else worker_count(config)  # in memory: no workers
        # Global order: the position is the global sample index (= samples seen), whatever the host and worker
        # counts; a stream (webdataset shards) is positioned by its grain state, saved per host and worker.
        self.global_order = in_global_order(config)
        self._ds = build_dataset(config, self.process_index, self.process_count, workers=self.worker_count)
        self._it = iter(self._ds)
        self._identity = identity_lib.data_identity(config)
        self._fingerprint = identity_lib.fingerprint(self._identity)
        self.counter = samples_lib.BadSampleCounter(float(config.max_bad_fraction), int(config.bad_fraction_min_samples))
        # With several hosts a host must not stop on its own counts: the others would wait for it in the
        # next collective. Then the guard runs in check_bad_fraction, on counts summed over hosts.
        self._check_locally = self.process_count == 1
        load_counts = getattr(self._ds, "load_counts", None)
        if load_counts is not None:  # in memory: the load pass is what was read from the source
            self.counter.add(load_counts[0], load_counts[1])
            if self._check_locally:
                self.counter.check()
        self.batches = 0
        self._samples_seen = 0
        self._exhausted = False
        self.wait_s = 0.0

    def __iter__(self):
        return self

    def _next_with_mask(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The next host batch as grain made it (a finite pass's last one may be short) and its valid rows."""
        if self._exhausted:
            raise StopIteration
        t0 = time.perf_counter()
        try:
            batch = next(self._it)
        except StopIteration:
            self._exhausted = True
            raise
        finally:
            self.wait_s += time.perf_counter() - t0
        skipped = batch.pop("skipped")
        valid = batch.pop("valid", None)
        valid = np.ones(len(batch["text"]), bool) if valid is None else np.asarray(valid, bool)
        if not self._in_memory:  # in memory, batches repeat samples the load pass already counted
            self.counter.add(int(valid.sum()), skipped)
        self.batches += 1
        # Counted here, not derived from batches: a run resumed with another global batch size keeps
        # the samples it saw before and adds the new size from then on.
        self._samples_seen += self.global_batch_size
        if self._check_locally:
            self.counter.check()
        return batch, valid

    def __next__(self) -> dict[str, np.ndarray]:
        batch, valid = self._next_with_mask()
        if not valid.all():  # only the last batch of a finite stream
            batch = {k: v[valid] for k, v in batch.items()}
        return batch

    @property
    def samples_seen(self) -> int:
        """Samples consumed by the whole job (all hosts): the global batch size summed over batches.

        Restored from the state on resume (not recomputed), so it stays exact when the batch size
        changes. Exact for training (full batches on every host, ``drop_remainder``); for a finite pass
        that keeps a partial last batch, ``counter.good`` is this host's exact count.
        """
        return self._samples_seen

    def fingerprint(self) -> str:
        """Short hex hash of the data identity (which samples in which order); also in the saved state."""
        return self._fingerprint

    def identity(self) -> dict[str, Any]:
        """The fields the fingerprint covers (``identity.data_identity``), e.g. for the trainer's run.json."""
        return json.loads(json.dumps(self._identity))

    def global_batch(self, sharding) -> dict[str, Any]:
        """The next batch as global arrays sharded along the batch axis (``make_array_from_process_local_data``)."""
        return to_global(next(self), sharding)

    # -- decisions all hosts take together -------------------------------------------------------------

    def default_reduce(self) -> hosts.ReduceFn:
        """How counts are summed over hosts: ``hosts.allgather_sum`` with several, nothing with one."""
        return hosts.local_only if self.process_count == 1 else hosts.allgather_sum

    def bad_counts(self) -> np.ndarray:
        """This host's ``[good, skipped per samples.BAD_REASONS...]`` (int64), for summing over hosts."""
        return np.concatenate([[self.counter.good], self.counter.bad]).astype(np.int64)

    def check_bad_fraction(self, reduce_fn: hosts.ReduceFn | None = None) -> None:
        """The bad-sample guard on the counts of all hosts: every host raises the same error, or none does.

        ``reduce_fn`` sums an int64 vector over hosts (default ``default_reduce()``: a
        ``process_allgather`` under multi-host). It is a collective, so call it on every host at the same
        steps, e.g. every log step; with one process ``next`` already checks after each batch and this
        repeats that check. Raises ``samples.BadDataError`` (a one-line ``UserError``).
        """
        totals = np.asarray((reduce_fn or self.default_reduce())(self.bad_counts()), np.int64)
        everyone = samples_lib.BadSampleCounter(self.counter.max_bad_fraction, self.counter.min_samples)
        everyone.good, everyone.bad = int(totals[0]), totals[1:].copy()
        everyone.check(where=f"over {self.process_count} hosts" if self.process_count > 1 else "")

    def padded_batches(self, reduce_fn: hosts.ReduceFn | None = None) -> Iterator[dict[str, np.ndarray]]:
        """A finite pass in which every host yields the same number of batches (for evaluation).

        Host shares differ (``shards[i::n]``, bad samples), but every host must enter the same number of
        collectives. Each batch has the full per-host size and a ``valid`` bool ``[b]``: rows past this
        host's data are zeros with ``valid`` False, and once a host has run out it yields all-invalid
        batches until every host has. Each round sums one flag over hosts (``reduce_fn``, as in
        ``check_bad_fraction``; a collective, so every host must iterate the pass). Place the mask with
        ``to_global(batch, sharding, keys=("image", "text", "valid"))`` and weight metrics by it.
        """
        if self.config.get("num_epochs", None) is None:
            raise UserError("padded_batches is for finite passes; set data.num_epochs (e.g. 1)")
        if bool(self.config.drop_remainder) and not self._in_memory:
            raise UserError("padded_batches pads the last batch instead of dropping it; set data.drop_remainder=False")
        reduce_fn = reduce_fn or self.default_reduce()
        size, b = int(self.config.image_size), self.host_batch_size
        while True:
            try:
                batch, valid = self._next_with_mask()
            except StopIteration:
                batch, valid = None, np.zeros(0, bool)
            if int(np.asarray(reduce_fn(np.asarray([batch is not None], np.int64)))[0]) == 0:
                return
            out = {"image": np.zeros((b, size, size, 3), self.image_dtype),
                   "text": np.zeros((b, int(self.config.context_length)), np.int32), "valid": np.zeros(b, bool)}
            if batch is not None:
                n = len(valid)
                out["image"][:n], out["text"][:n], out["valid"][:n] = batch["image"], batch["text"], valid
            yield out

    def metrics(self, prefix: str = "data/") -> dict[str, float]:
        out = self.counter.metrics(prefix)
        out[f"{prefix}samples_seen"] = float(self.samples_seen)
        out[f"{prefix}batches"] = float(self.batches)
        out[f"{prefix}wait_s"] = self.wait_s
        return out

    # -- state -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "process_index": self.process_index,
            "process_count": self.process_count,
            "worker_count": self.worker_count,
            "host_batch_size": self.host_batch_size,
            "batches": self.batches,
            "samples_seen": self._samples_seen,
            "fingerprint": self._fingerprint,
            "identity": self._identity,
            "counter": self.counter.get_state(),
            "order": "global" if self.global_order else "stream",
            # Global order needs no grain state: the position is samples_seen.
            "grain": None if self.global_order else self._it.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continues from a saved state: this host's own, or ``{"elastic": [state of every saved host]}`` when the
        checkpoint was written by another host count (``runtime.checkpoint``'s data handler gives that)."""
        if "elastic" in state:
            return self._load_elastic(list(state["elastic"]))
        version = int(state.get("version", -1))
        if version not in (1, 2, STATE_VERSION):
            raise UserError(f"data iterator state has version {state.get('version')}, expected {STATE_VERSION}")
        self._check_fingerprint(state)
        if self.global_order:
            if state.get("order") != "global":
                raise UserError("data state was saved by an older vlscale, whose order of samples depended on the "
                                "host count; resume it with that version, or start the run again")
            self._seek(int(state["samples_seen"]))
            self.batches = int(state["batches"])
            self.counter.set_state(state["counter"])
            return None
        workers = state.get("worker_count")
        if int(state["process_count"]) != self.process_count or (workers is not None and int(workers) != self.worker_count):
            # A shard stream on another topology: its new position comes from every saved host's state.
            raise NeedsAllHosts(f"saved by {state['process_count']} hosts x {workers} workers")
        self._it.set_state(state["grain"])
        self._exhausted = False
        self.batches = int(state["batches"])
        self._samples_seen = int(state.get("samples_seen", self.batches * self.global_batch_size))
        self.counter.set_state(state["counter"])
        return None

    def _resume_stream_elsewhere(self, states: list[Mapping[str, Any]]) -> None:
        """A shard stream saved by another host or worker count: every reader starts at the first shard of the
        epoch after the latest one any saved reader opened (``webdataset.elastic_state``; the rest of the
        interrupted epoch is skipped, nothing is read twice within an epoch: docs/data.md)."""
        from vlscale.data import webdataset

        try:
            grain_state = webdataset.elastic_state(states, self._it.get_state())
        except ValueError as e:
            raise UserError(f"the checkpoint's data position cannot continue on {self.process_count} hosts x "
                            f"{self.worker_count} workers: {e}") from None
        self._it.set_state(grain_state)
        self._exhausted = False

    def _check_fingerprint(self, state: Mapping[str, Any]) -> None:
        saved = state.get("fingerprint")
        if saved is not None and saved != self._fingerprint:
            what = identity_lib.describe_difference(state.get("identity") or {}, self._identity)
            raise UserError(f"data state was saved for other data (fingerprint {saved}, now {self._fingerprint}: "
                            f"{what}); resume with the data config the run was started with")

    def _seek(self, samples_seen: int) -> None:
        """Rebuilds the pipeline at global sample ``samples_seen`` (global order only)."""
        self.close()
        self._ds = build_dataset(self.config, self.process_index, self.process_count, start=samples_seen,
                                 workers=self.worker_count)
        self._it = iter(self._ds)
        self._exhausted = False
        self._samples_seen = samples_seen

    def _load_elastic(self, states: list[Mapping[str, Any]]) -> None:
        """A state saved by another host count: continue at the same global sample (global order); the
        bad-sample counts of all saved hosts are summed on host 0, so the guard's totals are unchanged."""
        if not states:
            raise UserError("the checkpoint holds no data state")
        for st in states:
            self._check_fingerprint(st)
        seen = {int(st["samples_seen"]) for st in states}
        if len(seen) != 1:
            raise UserError(f"the checkpoint's data states disagree on the samples seen ({sorted(seen)})")
        if not self.global_order:
            self._resume_stream_elsewhere(states)
            self._samples_seen = seen.pop()
        elif states[0].get("order") != "global":
            raise UserError("data state was saved by an older vlscale, whose order of samples depended on the "
                            "host count; resume it on the same host count with that version, or start again")
        else:
            self._seek(seen.pop())
        self.batches = int(states[0]["batches"])
        total = samples_lib.BadSampleCounter(self.counter.max_bad_fraction, self.counter.min_samples)
        if self.process_index == 0:
            for st in states:
                part = samples_lib.BadSampleCounter()
                part.set_state(st["counter"])
                total.good += part.good
                total.bad = total.bad + part.bad
        self.counter.set_state(total.get_state())

    def get_state(self) -> bytes:
        return json.dumps(self.state_dict(), indent=1).encode()

    def set_state(self, state: bytes | str | Mapping[str, Any]) -> None:
        if isinstance(state, (bytes, str)):
            state = json.loads(state)
        self.load_state_dict(state)

    def start_prefetch(self) -> None:
        start = getattr(self._it, "start_prefetch", None)
        if start is not None:
            start()

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def to_global(batch: Mapping[str, np.ndarray], sharding, keys=DEVICE_KEYS) -> dict[str, Any]:
    """Builds global arrays from each host's slice of the batch, laid out by the batch ``sharding``."""
    import jax

    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k])) for k in keys if k in batch}


def make_iterator(config, **kwargs) -> DataIterator:
    """The data iterator for a ``configs.data`` ConfigDict (see ``DataIterator``)."""
    return DataIterator(config, **kwargs)

