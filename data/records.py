"""Source dispatch: the raw record stream of this host for ``config.source``, sharded across hosts and shuffled.

* streaming tar shards (``webdataset``): each epoch deals every reader (host x worker) an equal share of a
  seeded permutation of the shards (``webdataset.balanced_epoch_window``), opened ``cycle_length`` at a time, then
  mixed by a window shuffle buffer;
* random-access sources (``synth``, ``tfds``, ``folder``): training batches follow the global sample order
  (``global_order``: a function of the seed and the global sample index, whatever the host count); a finite
  pass (the in-memory load) splits indices across hosts (``ds[i::n]``).
"""

from __future__ import annotations

import grain

from vlscale.errors import UserError

SOURCES = ("synth", "webdataset", "tfds", "folder")


def synth_source(config, length: int | None = None):
    """The synthetic stream ``config.synth`` describes (``length`` records; default endless)."""
    from vlscale.data import synth, synth_scene

    cfg = synth_scene.SynthConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.synth.knobs.items()})
    kw = {} if length is None else {"length": int(length)}
    return synth.SynthSource(cfg, seed=int(config.synth.seed), split=config.synth.split, **kw)


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
    """Tar shards as this host's record stream, then a window shuffle. Every host passes the global shard list;
    ``webdataset.ShardInterleaveIterDataset`` picks each reader's (host x worker) shards per epoch: equal shares
    in an endless stream, each shard once in a finite pass."""
    from vlscale.data import shards as shards_lib
    from vlscale.data import webdataset

    shard_list = shards_lib.expand_shards(spec)
    shards_lib.check_enough_shards(len(shard_list), process_count)
    ds = webdataset.ShardInterleaveIterDataset(shard_list, seed=seed, shuffle=shuffle, cycle_length=cycle_length,
                                               num_epochs=num_epochs, process_index=process_index,
                                               process_count=process_count)
    if shuffle and shuffle_window > 1:
        ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=shuffle_window, seed=seed)
    return ds


def random_access_source(config):
    """The random-access source ``config.source`` names (synth, tfds, folder); None for webdataset (a stream)."""
    kind = config.source
    if kind == "webdataset":
        return None
    if kind == "synth":
        return synth_source(config)
    if kind == "tfds":
        from vlscale.data import tfds_source

        return tfds_source.TfdsCaptionSource(**dict(config.tfds))
    if kind == "folder":
        from vlscale.data import folder

        return folder.FolderCaptionSource(**dict(config.folder))
    raise UserError(f"unknown data.source {kind!r}; choose one of {', '.join(SOURCES)}")


def source_records(config, process_index: int, process_count: int) -> grain.IterDataset:
    """The raw record stream for this host, chosen by ``config.source`` (a finite pass: the in-memory load and
    evaluation sets; training batches of random-access sources come from ``global_order``)."""
    kind = config.source
    read_threads = int(config.get("read_threads", 0))
    common = dict(process_index=process_index, process_count=process_count, seed=int(config.seed),
                  num_epochs=config.get("num_epochs", None))
    if kind == "webdataset":
        if not config.shards:
            raise UserError("data.source is 'webdataset' but data.shards is empty; set it to a path, glob or brace range")
        return webdataset_records(config.shards, shuffle=bool(config.shuffle), cycle_length=int(config.cycle_length),
                                  shuffle_window=int(config.shuffle_window), **common)
    src = random_access_source(config)
    # Synthetic records are i.i.d. draws already; a global permutation of 2**40 indices would add nothing.
    shuffle = bool(config.shuffle) and kind != "synth"
    return random_access_records(src, shuffle=shuffle, read_threads=read_threads, **common)
