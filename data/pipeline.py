"""The grain input pipeline: source -> host shard -> shuffle -> repeat -> decode/transform/tokenise ->
per-host batch -> worker processes -> ``DataIterator`` (bad-sample guard, exact accounting, state) ->
global arrays on the mesh.

Two source shapes feed the same back half:

* streaming tar shards (``webdataset``): shards are split across hosts (``shards[i::n]``), opened
  ``cycle_length`` at a time in a per-epoch shuffled order, then mixed by a window shuffle buffer;
* random-access sources (``synth``, ``tfds``, ``folder``): indices are split across hosts
  (``ds[i::n]``) and globally permuted per epoch by grain's index shuffle.

Small datasets can instead be decoded once and served from memory (``config.in_memory``).

Every stage keeps a small, JSON-serialisable iterator state, so a restored pipeline emits exactly the
batches an uninterrupted run would have (see ``DataIterator.get_state`` and docs/data.md for the layout).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import numpy as np

from vlscale.data import array_cache, hosts
from vlscale.data import identity as identity_lib
from vlscale.data import samples as samples_lib
from vlscale.errors import UserError

log = logging.getLogger(__name__)

STATE_VERSION = 2  # 2 added the data fingerprint, worker count and host batch size; 1 still restores
DEVICE_KEYS = ("image", "text")  # what goes onto the mesh; bookkeeping stays on the host
# float32: normalised on the host (the models' contract); uint8: resized/cropped pixels, normalised on
# the device with ``normalize_images`` (4x less host work and transfer, identical float32 arithmetic).
IMAGE_DTYPES = ("float32", "uint8")
SOURCES = ("synth", "webdataset", "tfds", "folder")


def process_index_and_count(config) -> tuple[int, int]:
    """This host's index and the host count: from the config when set (tests, simulation), else from jax."""
    pi = config.get("process_index", None)
    pc = config.get("process_count", None)
    if pi is None or pc is None:
        import jax

        pi = jax.process_index() if pi is None else pi
        pc = jax.process_count() if pc is None else pc
    return int(pi), int(pc)


def per_host_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise UserError(
            f"global batch size {global_batch_size} does not split over {process_count} hosts; "
            "choose a multiple of the host count"
        )
    return global_batch_size // process_count


class DecodeIterDataset(grain.IterDataset):
    """Decodes, validates, transforms and tokenises records; skips bad ones and counts them.

    Each output element carries ``skipped``: an int32 vector (one slot per ``samples.BAD_REASONS``)
    of records skipped since the previous good one, so counts survive worker processes and batching.
    The training augmentation draws its randomness from (seed, records read, record key), which makes it
    reproducible on resume and different across workers.
    """

    def __init__(self, parent: grain.IterDataset, *, image_size: int, context_length: int, train: bool,
                 seed: int, train_scale=(0.9, 1.0), max_consecutive_bad: int = 1000,
                 warn_interval_s: float = 30.0, image_dtype: str = "float32"):
        super().__init__(parent)
        if image_dtype not in IMAGE_DTYPES:
            raise UserError(f"data.image_dtype {image_dtype!r} is not one of {IMAGE_DTYPES}")
        self.image_dtype = image_dtype
        self.image_size = image_size
        self.context_length = context_length
        self.train = train
        self.seed = seed
        self.train_scale = tuple(train_scale)
        self.max_consecutive_bad = max_consecutive_bad
        self.warn_interval_s = warn_interval_s

    def __iter__(self):
        return _DecodeIterator(self, self._parent.__iter__())

    def __str__(self) -> str:
        return f"DecodeIterDataset(image_size={self.image_size}, train={self.train})"


class _DecodeIterator(grain.DatasetIterator):
    def __init__(self, ds: DecodeIterDataset, parent):
        super().__init__(parent)
        from vlscale.models import tokenizer as tokenizer_lib
        from vlscale.models import transforms

        self._ds = ds
        self._tokenizer = tokenizer_lib.get_tokenizer(ds.context_length)
        self._transforms = transforms
        self._read = 0
        self._warner = samples_lib.RateLimitedWarner(ds.warn_interval_s)

    def _process(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        image, caption = samples_lib.decode_record(record)
        try:
            t = self._transforms
            size = self._ds.image_size
            rng = None
            if self._ds.train:
                key = f"{record.get('__url__', '')}/{record.get('__key__', '')}".encode()
                rng = np.random.default_rng([self._ds.seed, self._read, zlib.crc32(key)])
            if self._ds.image_dtype == "float32":  # the models' transforms, as they are
                if rng is not None:
                    pixels = t.train_transform(image, size, rng, scale=self._ds.train_scale)
                else:
                    pixels = t.eval_transform(image, size)
            else:  # the same geometry, stopping before normalisation (tested equal after normalize_images)
                if rng is not None:
                    image = t.train_resize_crop(image, size, rng, scale=self._ds.train_scale)
                else:
                    image = t.eval_resize_crop(image, size)
                pixels = np.asarray(image.convert("RGB"), np.uint8)
            tokens = self._tokenizer(caption)[0]
        except Exception as e:  # noqa: BLE001 - one bad sample must not end a multi-day run
            raise samples_lib.BadSample("transform_error", f"{type(e).__name__}: {e}") from None
        return {"image": pixels, "text": np.asarray(tokens, np.int32)}

    def __next__(self) -> dict[str, np.ndarray]:
        skipped = np.zeros(len(samples_lib.BAD_REASONS), np.int32)
        while True:
            try:
                record = next(self._parent)
            except StopIteration:
                if skipped.any():  # a finite stream that ends in bad records: report them on a blank row
                    return self._blank(skipped)
                raise
            self._read += 1
            try:
                out = self._process(record)
            except samples_lib.BadSample as bad:
                skipped[samples_lib.REASON_INDEX[bad.reason]] += 1
                where = f"{record.get('__url__', '')} {record.get('__key__', '')}".strip()
                self._warner.warn(bad.reason, f"{where} {bad.detail}".strip())
                if skipped.sum() >= self._ds.max_consecutive_bad:
                    raise samples_lib.BadDataError(
                        f"{int(skipped.sum())} records in a row were bad (last: {bad.reason} at {where}); "
                        "check the data source"
                    ) from None
                continue
            out["skipped"] = skipped
            out["valid"] = np.bool_(True)
            return out

    def _blank(self, skipped: np.ndarray) -> dict[str, np.ndarray]:
        size = self._ds.image_size
        return {"image": np.zeros((size, size, 3), self._ds.image_dtype),
                "text": np.zeros(self._ds.context_length, np.int32), "skipped": skipped, "valid": np.bool_(False)}

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "read": self._read}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._read = int(state["read"])


def random_access_records(source, *, process_index: int, process_count: int, seed: int, shuffle: bool,
                          num_epochs: int | None, read_threads: int = 0) -> grain.IterDataset:
    """A random-access source as a host-sharded, per-epoch shuffled, repeated stream of records."""
    ds = grain.MapDataset.source(source)
    if len(ds) < process_count:
        raise UserError(f"data source has {len(ds)} records, fewer than the {process_count} hosts")
    ds = ds[process_index::process_count]
    if shuffle:
        ds = ds.shuffle(seed)
    ds = ds.repeat(num_epochs)
    # Records are cheap to fetch (metadata, local array_record, or drawn on the CPU): grain's default 16
    # read threads would only fight the decode stage for the GIL. Raise read_threads for remote storage.
    options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(1, 4 * read_threads))
    return ds.to_iter_dataset(options)


def webdataset_records(spec, *, process_index: int, process_count: int, seed: int, shuffle: bool,
                       num_epochs: int | None, cycle_length: int, shuffle_window: int) -> grain.IterDataset:
    from vlscale.data import shards as shards_lib
    from vlscale.data import webdataset

    shard_list = shards_lib.host_shards(shards_lib.expand_shards(spec), process_index, process_count)
    ds = webdataset.ShardInterleaveIterDataset(shard_list, seed=seed, shuffle=shuffle, cycle_length=cycle_length,
                                               num_epochs=num_epochs)
    if shuffle and shuffle_window > 1:
        ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=shuffle_window, seed=seed)
    return ds


def source_records(config, process_index: int, process_count: int) -> grain.IterDataset:
    """The raw record stream for this host, chosen by ``config.source``."""
    kind = config.source
    read_threads = int(config.get("read_threads", 0))
    common = dict(process_index=process_index, process_count=process_count, seed=int(config.seed),
                  num_epochs=config.get("num_epochs", None))
    if kind == "webdataset":
        if not config.shards:
            raise UserError("data.source is 'webdataset' but data.shards is empty; set it to a path, glob or brace range")
        return webdataset_records(config.shards, shuffle=bool(config.shuffle), cycle_length=int(config.cycle_length),
                                  shuffle_window=int(config.shuffle_window), **common)
    if kind == "synth":
        from vlscale.data import synth

        cfg = synth.SynthConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.synth.knobs.items()})
        src = synth.SynthSource(cfg, seed=int(config.synth.seed), split=config.synth.split)
        # Records are i.i.d. draws already; a global permutation of 2**40 indices would add nothing.
        return random_access_records(src, shuffle=False, read_threads=read_threads, **common)
    if kind == "tfds":
        from vlscale.data import tfds_source

        src = tfds_source.TfdsCaptionSource(**dict(config.tfds))
        return random_access_records(src, shuffle=bool(config.shuffle), read_threads=read_threads, **common)
    if kind == "folder":
        from vlscale.data import folder

        src = folder.FolderCaptionSource(**dict(config.folder))
        return random_access_records(src, shuffle=bool(config.shuffle), read_threads=read_threads, **common)
    raise UserError(f"unknown data.source {kind!r}; choose one of {', '.join(SOURCES)}")


def build_dataset(config, process_index: int, process_count: int) -> grain.IterDataset:
    """The per-host dataset of batches ``{"image", "text", "skipped"}`` (numpy), workers included."""
    image_dtype = str(config.get("image_dtype", "uint8"))
    if image_dtype not in IMAGE_DTYPES:
        raise UserError(f"data.image_dtype {image_dtype!r} is not one of {IMAGE_DTYPES}")
    if bool(config.get("in_memory", False)):
        return in_memory_batches(config, process_index, process_count)
    records = source_records(config, process_index, process_count)
    # Samples are decoded to uint8 and batched as uint8 (4x fewer bytes to stack and to send between
    # processes); float32 is then one table lookup over the whole batch, equal to the per-sample path.
    ds = DecodeIterDataset(
        records, image_size=int(config.image_size), context_length=int(config.context_length),
        train=bool(config.train), seed=int(config.seed), train_scale=tuple(config.train_scale),
        max_consecutive_bad=int(config.max_consecutive_bad), warn_interval_s=float(config.warn_interval_s),
        image_dtype="uint8",
    )
    ds = ds.batch(per_host_batch_size(int(config.batch_size), process_count), drop_remainder=bool(config.drop_remainder))
    if int(config.worker_count) > 0:
        # grain starts its workers with the "spawn" method (a fresh interpreter, never os.fork), so a
        # process that already holds a JAX runtime can use them (tests/data/test_workers.py checks it).
        _absl_flags_with_defaults()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(config.worker_count),
                                                         per_worker_buffer_size=int(config.worker_buffer_size)),
                            worker_init_fn=_data_worker_init)
    if image_dtype == "float32":
        # After the workers: they ship uint8 (4x fewer bytes between processes), and the lookup is cheap.
        ds = ds.map(_normalize_batch)
    if int(config.get("prefetch", 0)) > 0:
        # A thread in the main process keeps batches ready while the step runs (decode, resize and JAX
        # release the GIL). Its state is the state of the batch last handed out, so resume stays exact.
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=int(config.prefetch))
    return ds


@functools.cache
def _normalize_table() -> np.ndarray:
    """float32 [3, 256]: every uint8 value of each channel through ``to_normalized_array``'s arithmetic."""
    from vlscale.models.transforms import OPENAI_MEAN, OPENAI_STD

    values = np.arange(256, dtype=np.float32)[:, None]
    table = (values / np.float32(255) - np.asarray(OPENAI_MEAN, np.float32)) / np.asarray(OPENAI_STD, np.float32)
    return np.ascontiguousarray(table.T)


def normalize_host(images: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, 3] -> float32 normalised with the OpenAI statistics, on the host.

    A table lookup per channel: each entry is computed with the float32 operations of
    ``models.transforms.to_normalized_array`` (divide by 255, subtract the mean, divide by the std),
    so the result equals the per-sample path bit for bit, with one pass over the batch instead of four.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"normalize_host takes uint8 pixels, got {images.dtype}")
    table = _normalize_table()
    out = np.empty(images.shape, np.float32)
    for c in range(3):
        np.take(table[c], images[..., c], out=out[..., c])
    return out


def _normalize_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**batch, "image": normalize_host(batch["image"])}


def _data_worker_init(worker_index: int, worker_count: int) -> None:
    """First thing in every grain worker process: keep any JAX use in a data worker on the CPU.

    The workers are spawned interpreters that import grain (and with it jax). Nothing in the pipeline
    needs a device, but a worker that initialised the default backend would claim the host's GPU memory
    or TPU chips the trainer owns.
    """
    del worker_index, worker_count
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_platforms", "cpu")


class _ArrayBatches:
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
    load = _with(config, in_memory=False, num_epochs=1, shuffle=False, train=False, image_dtype="uint8",
                 batch_size=process_count, drop_remainder=False, worker_count=0, prefetch=0,
                 process_index=process_index, process_count=process_count)
    if load.source == "synth":
        from vlscale.data import synth

        cfg = synth.SynthConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in load.synth.knobs.items()})
        src = synth.SynthSource(cfg, seed=int(load.synth.seed), split=load.synth.split,
                                length=int(config.in_memory_samples))
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
    source = _ArrayBatches(images, tokens, batch_size=per_host_batch_size(int(config.batch_size), process_count),
                           seed=int(config.seed), shuffle=bool(config.shuffle), num_epochs=config.get("num_epochs", None),
                           normalize=str(config.get("image_dtype", "uint8")) == "float32")
    out = grain.MapDataset.source(source).to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=1))
    out.load_counts = (len(images), skipped)  # DataIterator's bad-sample accounting is the load pass
    out.array_batches = source  # to remap the position when a run resumes with another batch size
    return out


def _absl_flags_with_defaults() -> None:
    """Grain's worker processes read absl flags; outside an absl app nobody parsed them, so use defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


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
            config = _with(config, process_index=process_index, process_count=process_count)
        self.config = config
        self.process_index, self.process_count = process_index_and_count(config)
        self.global_batch_size = int(config.batch_size)
        self.host_batch_size = per_host_batch_size(self.global_batch_size, self.process_count)
        self.image_dtype = str(config.get("image_dtype", "uint8"))
        self._in_memory = bool(config.get("in_memory", False))
        self.worker_count = 0 if self._in_memory else int(config.worker_count)  # in memory: no workers
        self._ds = build_dataset(config, self.process_index, self.process_count)
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
            "grain": self._it.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        version = int(state.get("version", -1))
        if version not in (1, STATE_VERSION):
            raise UserError(f"data iterator state has version {state.get('version')}, expected {STATE_VERSION}")
        if int(state["process_count"]) != self.process_count:
            raise UserError(
                f"data state was saved with {state['process_count']} hosts but this run has {self.process_count}; "
                "restore on the same host count (shards are assigned per host)"
            )
        saved = state.get("fingerprint")
        if saved is not None and saved != self._fingerprint:
            what = identity_lib.describe_difference(state.get("identity") or {}, self._identity)
            raise UserError(f"data state was saved for other data (fingerprint {saved}, now {self._fingerprint}: "
                            f"{what}); resume with the data config the run was started with")
        workers = state.get("worker_count")
        if workers is not None and int(workers) != self.worker_count:
            raise UserError(f"data state was saved with {workers} worker processes per host but data.worker_count "
                            f"is {self.worker_count}; set data.worker_count={workers} to resume (each worker's "
                            "position is saved separately)")
        grain_state = state["grain"]
        saved_batch = state.get("host_batch_size")
        if self._in_memory and saved_batch is not None and int(saved_batch) != self.host_batch_size:
            grain_state = {**grain_state, "next_index": self._ds.array_batches.remap_index(
                int(grain_state["next_index"]), int(saved_batch))}
        self._it.set_state(grain_state)
        self._exhausted = False
        self.batches = int(state["batches"])
        self._samples_seen = int(state.get("samples_seen", self.batches * self.global_batch_size))
        self.counter.set_state(state["counter"])

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


def normalize_images(images):
    """uint8 [..., H, W, 3] -> float32 normalised with the OpenAI statistics, on whatever device holds them.

    The same float32 operations as ``models.transforms.to_normalized_array`` (divide by 255, subtract
    the mean, divide by the std), so the result matches the host path.
    """
    import jax.numpy as jnp

    from vlscale.models.transforms import OPENAI_MEAN, OPENAI_STD

    x = jnp.asarray(images).astype(jnp.float32) / jnp.float32(255)
    return (x - jnp.asarray(OPENAI_MEAN, jnp.float32)) / jnp.asarray(OPENAI_STD, jnp.float32)


def _with(config, **overrides):
    config = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") else dict(config)
    with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
        for k, v in overrides.items():
            config[k] = v
    return config


def make_iterator(config, **kwargs) -> DataIterator:
    """The data iterator for a ``configs.data`` ConfigDict (see ``DataIterator``)."""
    return DataIterator(config, **kwargs)

