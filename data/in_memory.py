"""The in-memory path (``config.in_memory``): decode a small dataset once, then serve batches by gathering arrays."""

from __future__ import annotations

import logging

import grain
import numpy as np

from vlscale.data import array_cache
from vlscale.data import samples as samples_lib
from vlscale.data.config_fields import per_host_batch_size, with_overrides
from vlscale.data.decode import DecodeIterDataset
from vlscale.data.normalize import normalize_host
from vlscale.data.records import random_access_records, source_records, synth_source
from vlscale.errors import UserError

log = logging.getLogger(__name__)


class ArrayBatches:
    """Random-access source of this host's batches gathered from preprocessed arrays (the in-memory path).

    The held samples form one global stream: position ``p`` is sample ``perm_e[p mod n]`` of epoch ``e = p // n``
    (a fresh permutation per epoch, by the data seed). Global batch ``k`` is positions ``start + k·B ...``, its
    indices sorted (a cheaper gather), and this host serves rows ``row0 ... row0 + b`` of it. Every host holds
    all samples, so the batches are a function of the seed and the global position only: any host count, and a
    resume with another global batch continues at position ``start`` = the samples already seen.
    """

    def __init__(self, images: np.ndarray, tokens: np.ndarray, *, global_batch_size: int, process_index: int,
                 process_count: int, seed: int, shuffle: bool, num_epochs: int | None, normalize: bool,
                 start: int = 0):
        self.images, self.tokens, self.normalize = images, tokens, normalize
        self.global_batch_size, self.seed, self.shuffle = int(global_batch_size), seed, shuffle
        self.batch_size = per_host_batch_size(self.global_batch_size, process_count)
        self.row0, self.start = int(process_index) * self.batch_size, int(start)
        n = len(images)
        if n < self.global_batch_size:
            raise UserError(f"{n} samples in memory cannot fill one global batch of {self.global_batch_size}")
        total = n * num_epochs if num_epochs is not None else 2**62
        self.length = max((total - self.start) // self.global_batch_size, 0)
        self._perms: dict[int, np.ndarray] = {}
        self._skipped = np.zeros((self.batch_size, len(samples_lib.BAD_REASONS)), np.int32)
        self._valid = np.ones(self.batch_size, bool)

    def __len__(self) -> int:
        return self.length

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            n = len(self.images)
            perm = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            if len(self._perms) >= 2:  # a batch spans at most two epochs
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        n = len(self.images)
        first = self.start + int(index) * self.global_batch_size
        positions = np.arange(first, first + self.global_batch_size, dtype=np.int64)
        epochs = positions // n
        idx = np.empty(self.global_batch_size, np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            idx[sel] = self._permutation(int(e))[positions[sel] % n]
        idx = np.sort(idx)[self.row0 : self.row0 + self.batch_size]
        images = self.images[idx]
        if self.normalize:
            images = normalize_host(images)
        return {"image": images, "text": self.tokens[idx], "skipped": self._skipped, "valid": self._valid}


def load_arrays(config, process_index: int, process_count: int, *, check: bool = True
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass over this host's share of the source: eval geometry, uint8 pixels, token ids, skip counts.

    The synthetic stream is cut to ``config.in_memory_samples`` records (finite sources are read whole)
    and served from ``array_cache`` when it was drawn before with the same key. ``check``: apply the
    bad-sample guard here (one host); ``DataIterator`` defers it to the all-host check under multi-host.
    """
    key = array_cache.cache_key(config, process_index, process_count)
    if key is not None:
        folder = array_cache.cache_dir(config)
        cached = array_cache.load(key, folder)
        if cached is not None:
            log.info("in-memory synthetic set %s from the cache", key)
            return cached
    arrays = _read_arrays(config, process_index, process_count)
    if check:
        counter = samples_lib.BadSampleCounter(float(config.max_bad_fraction), int(config.bad_fraction_min_samples))
        counter.add(len(arrays[0]), arrays[2])
        counter.check()
    if key is not None:
        array_cache.save(key, folder, arrays)
    return arrays


def _read_arrays(config, process_index: int, process_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    load = with_overrides(config, in_memory=False, num_epochs=1, shuffle=False, train=False, image_dtype="uint8",
                 batch_size=process_count, drop_remainder=False, worker_count=0, prefetch=0,
                 process_index=process_index, process_count=process_count)
    if load.source == "synth":
        src = synth_source(load, length=int(config.in_memory_samples))
        records = random_access_records(src, process_index=process_index, process_count=process_count, seed=0,
                                        shuffle=False, num_epochs=1)
    else:
        records = source_records(load, process_index, process_count)
    ds = DecodeIterDataset(records, image_size=int(load.image_size), context_length=int(load.context_length),
                           train=False, seed=0, max_consecutive_bad=int(load.max_consecutive_bad),
                           warn_interval_s=float(load.warn_interval_s), image_dtype="uint8")
    images, tokens = [], []
    skipped = np.zeros(len(samples_lib.BAD_REASONS), np.int64)
    for element in ds:
        skipped += element["skipped"]
        if element["valid"]:
            images.append(element["image"])
            tokens.append(element["text"])
    if not images:
        raise UserError("the data source yielded no good samples to hold in memory")
    return np.stack(images), np.stack(tokens), skipped


def in_memory_batches(config, process_index: int, process_count: int, *, start: int = 0) -> grain.IterDataset:
    """Batches served from arrays held in memory: decode, resize and tokenise happen once, at start.

    For datasets that fit in RAM (the CPU scaling demo's synthetic sets): a batch is one gather, so
    the data wait is negligible next to even a tiny model's step. Images get the eval geometry (no
    per-epoch RandomResizedCrop); order is a fresh permutation per epoch (``ArrayBatches``). Every host loads
    the whole set (small by definition), so the order does not depend on the host count.
    """
    images, tokens, skipped = load_arrays(config, 0, 1, check=process_count == 1)
    log.info("holding %d samples in memory (%.1f MB); skipped at load: %s", len(images),
             (images.nbytes + tokens.nbytes) / 1e6, {r: int(n) for r, n in zip(samples_lib.BAD_REASONS, skipped) if n})
    source = ArrayBatches(images, tokens, global_batch_size=int(config.batch_size), process_index=process_index,
                          process_count=process_count, seed=int(config.seed), shuffle=bool(config.shuffle),
                          num_epochs=config.get("num_epochs", None), start=start,
                          normalize=str(config.get("image_dtype", "uint8")) == "float32")
    out = grain.MapDataset.source(source).to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=1))
    # DataIterator's bad-sample accounting is the load pass; every host read it all, so host 0 counts it.
    out.load_counts = (len(images), skipped) if process_index == 0 else (0, np.zeros_like(skipped))
    return out
