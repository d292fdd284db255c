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
    """Random-access source of whole batches gathered from preprocessed arrays (the in-memory path).

    Batch ``b`` is slice ``b mod k`` of epoch ``b // k``'s permutation (``k`` full batches per epoch),
    so any batch is computed directly from its index: grain's index is the whole iterator state.
    """

    def __init__(self, images: np.ndarray, tokens: np.ndarray, *, batch_size: int, seed: int, shuffle: bool,
                 num_epochs: int | None, normalize: bool):
        self.images, self.tokens, self.normalize = images, tokens, normalize
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.batches_per_epoch = len(images) // batch_size
        if self.batches_per_epoch == 0:
            raise UserError(f"{len(images)} samples in memory cannot fill one batch of {batch_size}")
        self.length = self.batches_per_epoch * num_epochs if num_epochs is not None else 2**62
        self._perm: tuple[int, np.ndarray] | None = None
        self._skipped = np.zeros((batch_size, len(samples_lib.BAD_REASONS)), np.int32)
        self._valid = np.ones(batch_size, bool)

    def __len__(self) -> int:
        return self.length

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            n = len(self.images)
            perm = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._perm = (epoch, perm)
        return self._perm[1]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        epoch, b = divmod(int(index), self.batches_per_epoch)
        idx = np.sort(self._permutation(epoch)[b * self.batch_size : (b + 1) * self.batch_size])
        images = self.images[idx]
        if self.normalize:
            images = normalize_host(images)
        return {"image": images, "text": self.tokens[idx], "skipped": self._skipped, "valid": self._valid}

    def remap_index(self, index: int, saved_batch_size: int) -> int:
        """The batch index that continues a run saved at batch ``index`` with another per-host batch size.

        It stays in the same epoch (same permutation) and starts at the first batch boundary at or after
        the samples already consumed in it, so no sample of the epoch is repeated; fewer than one batch
        of them may be skipped.
        """
        n = len(self.images)
        saved_per_epoch = n // saved_batch_size
        epoch, b = divmod(int(index), saved_per_epoch)
        nb = -(-(b * saved_batch_size) // self.batch_size)
        if nb >= self.batches_per_epoch:
            epoch, nb = epoch + 1, 0
        return epoch * self.batches_per_epoch + nb


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


def in_memory_batches(config, process_index: int, process_count: int) -> grain.IterDataset:
    """Batches served from arrays held in memory: decode, resize and tokenise happen once, at start.

    For datasets that fit in RAM (the CPU scaling demo's synthetic sets): a batch is one gather, so
    the data wait is negligible next to even a tiny model's step. Images get the eval geometry (no
    per-epoch RandomResizedCrop); order is a fresh permutation per epoch, resumable by index.
    """
    images, tokens, skipped = load_arrays(config, process_index, process_count, check=process_count == 1)
    log.info("holding %d samples in memory (%.1f MB); skipped at load: %s", len(images),
             (images.nbytes + tokens.nbytes) / 1e6, {r: int(n) for r, n in zip(samples_lib.BAD_REASONS, skipped) if n})
    source = ArrayBatches(images, tokens, batch_size=per_host_batch_size(int(config.batch_size), process_count),
                          seed=int(config.seed), shuffle=bool(config.shuffle), num_epochs=config.get("num_epochs", None),
                          normalize=str(config.get("image_dtype", "uint8")) == "float32")
    out = grain.MapDataset.source(source).to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=1))
    out.load_counts = (len(images), skipped)  # DataIterator's bad-sample accounting is the load pass
    out.array_batches = source  # to remap the position when a run resumes with another batch size
    return out
