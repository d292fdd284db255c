"""The global sample order of random-access sources: what a step trains on is a function of the seed and the
global sample index only.

Global sample ``g`` (0, 1, 2, ... over the whole run, all hosts) is record ``order[g]`` of the source, where
``order`` is the source's indices permuted per epoch by the data seed (grain's index shuffle; unshuffled:
``g mod len``), and its training augmentation draws from ``numpy.random.default_rng([seed, g])``. Global batch
``k`` holds samples ``start + k·B ... start + (k+1)·B − 1`` (``B`` the global batch, ``start`` the samples
already seen when this pipeline was built), and host ``h`` of ``P`` feeds rows ``h·B/P ... (h+1)·B/P − 1`` of
it, the rows its devices hold under the batch sharding. So 1 host × 8 devices and 2 hosts × 4 devices train
on the same samples with the same crops, worker processes only change who computes an element, and a run
resumed on another host count, worker count or global batch continues at global sample ``samples_seen``:
nothing skipped, nothing repeated.

A bad record (a corrupt image, an empty caption) is replaced by a deterministic substitute: global sample
``g`` tries records ``order[g + a·STRIDE]`` for attempts ``a = 1, 2, ...`` (modulo the stream's length),
counting each skip, so batches stay full and the substitute is the same on every layout.
"""

from __future__ import annotations

import sys
from typing import Any

import grain
import numpy as np

from vlscale.data import samples as samples_lib
from vlscale.data.decode import SampleDecoder

STRIDE = 1_000_003  # a prime: the substitutes of one bad record are far apart in the stream


def global_records(source, *, seed: int, shuffle: bool, num_epochs: int | None) -> grain.MapDataset:
    """The source in global order: element ``g`` is the record of global sample ``g`` (module docstring)."""
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed)
    if num_epochs is None and len(ds) >= sys.maxsize // 2:  # an endless source (the synthetic stream)
        return ds
    return ds.repeat(num_epochs)


class HostShare(grain.MapDataset):
    """Host ``process_index``'s rows of the global batches from ``start`` on: element ``j`` is
    ``(g, records[g])`` with ``g = start + (j // b)·B + process_index·b + j mod b`` (``b = B / P``).

    Only full global batches: a finite stream's last partial batch is left out on every host alike.
    """

    def __init__(self, records: grain.MapDataset, *, global_batch_size: int, process_index: int,
                 process_count: int, start: int = 0):
        super().__init__(records)
        if global_batch_size % process_count:
            raise ValueError(f"global batch {global_batch_size} does not split over {process_count} hosts")
        self.global_batch_size, self.start = int(global_batch_size), int(start)
        self.host_batch_size = self.global_batch_size // int(process_count)
        self.row0 = int(process_index) * self.host_batch_size
        self._length = max((len(records) - self.start) // self.global_batch_size, 0) * self.host_batch_size

    def __len__(self) -> int:
        return self._length

    def global_index(self, index: int) -> int:
        k, r = divmod(int(index), self.host_batch_size)
        return self.start + k * self.global_batch_size + self.row0 + r

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        g = self.global_index(index)
        return g, self._parent[g]

    def __str__(self) -> str:
        return f"HostShare(B={self.global_batch_size}, rows {self.row0}+{self.host_batch_size}, start={self.start})"


class DecodeGlobal(grain.transforms.Map):
    """``(g, record)`` -> a sample with its training crop drawn from ``(seed, g)``; bad records replaced by
    their deterministic substitutes (module docstring), the skips counted in ``skipped``."""

    def __init__(self, records: grain.MapDataset, decoder: SampleDecoder, *, seed: int, train: bool,
                 max_consecutive_bad: int):
        self.records, self.decoder = records, decoder
        self.seed, self.train, self.max_consecutive_bad = int(seed), bool(train), int(max_consecutive_bad)

    def map(self, element: tuple[int, Any]) -> dict[str, np.ndarray]:
        g, record = element
        skipped = np.zeros(len(samples_lib.BAD_REASONS), np.int32)
        attempt = 0
        while True:
            rng = np.random.default_rng([self.seed, g, attempt]) if self.train else None
            try:
                out = self.decoder(record, rng)
                break
            except samples_lib.BadSample as bad:
                skipped[samples_lib.REASON_INDEX[bad.reason]] += 1
                attempt += 1
                if attempt >= self.max_consecutive_bad:
                    where = f"{record.get('__url__', '')} {record.get('__key__', '')}".strip()
                    raise samples_lib.BadDataError(
                        f"{attempt} records in a row were bad (last: {bad.reason} at {where or 'global sample ' + str(g)}"
                        "); check the data source") from None
                record = self.records[(g + attempt * STRIDE) % len(self.records)]
        out["skipped"] = skipped
        out["valid"] = np.bool_(True)
        return out


def host_batches(source, *, seed: int, shuffle: bool, num_epochs: int | None, global_batch_size: int,
                 process_index: int, process_count: int, start: int, decoder: SampleDecoder, train: bool,
                 max_consecutive_bad: int) -> grain.MapDataset:
    """This host's batches ``{"image", "text", "skipped", "valid"}`` from global sample ``start`` on, as a
    MapDataset (element ``k`` = this host's rows of global batch ``k``)."""
    records = global_records(source, seed=seed, shuffle=shuffle, num_epochs=num_epochs)
    share = HostShare(records, global_batch_size=global_batch_size, process_index=process_index,
                      process_count=process_count, start=start)
    decode = DecodeGlobal(records, decoder, seed=seed, train=train, max_consecutive_bad=max_consecutive_bad)
    return share.map(decode).batch(share.host_batch_size, drop_remainder=True)
