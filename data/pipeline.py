"""The grain input pipeline, composed. Random-access sources: global order (seed + global sample index) -> this
host's rows of each global batch -> decode/transform/tokenise -> batch (``global_order``); webdataset: host's
shards -> shuffle -> repeat -> decode -> per-host batch. Then worker processes -> normalise -> prefetch; ``iterator.DataIterator`` turns it into host
batches (bad-sample guard, exact accounting, state) and global arrays on the mesh.

The stages live in their own modules: ``records`` (source dispatch and host sharding), ``decode`` (records to
samples, bad ones skipped and counted), ``normalize`` (uint8 to float32), ``in_memory`` (small datasets decoded
once and served from memory, ``config.in_memory``).

Every stage keeps a small, JSON-serialisable iterator state, so a restored pipeline emits exactly the
batches an uninterrupted run would have (see ``DataIterator.get_state`` and docs/data.md for the layout).
"""

from __future__ import annotations

import os
import time

import grain

from vlscale.data.config_fields import per_host_batch_size, worker_count
from vlscale.data import global_order
from vlscale.data.decode import DecodeIterDataset, SampleDecoder
from vlscale.data.in_memory import in_memory_batches
from vlscale.data.normalize import IMAGE_DTYPES, normalize_batch
from vlscale.data.records import random_access_source, source_records
from vlscale.errors import UserError


def build_dataset(config, process_index: int, process_count: int, *, start: int = 0,
                  workers: int | None = None) -> grain.IterDataset:
    """The per-host dataset of batches ``{"image", "text", "skipped"}`` (numpy), workers included.

    ``workers``: data worker processes (default: ``config_fields.worker_count(config)``).
    ``start``: the global samples already seen. Random-access sources and the in-memory path begin at global
    sample ``start`` (their order is a function of the seed and the global sample index: ``global_order``);
    the webdataset stream is positioned by its saved iterator state instead, so it takes ``start=0``.
    """
    image_dtype = str(config.get("image_dtype", "uint8"))
    if image_dtype not in IMAGE_DTYPES:
        raise UserError(f"data.image_dtype {image_dtype!r} is not one of {IMAGE_DTYPES}")
    if bool(config.get("in_memory", False)):
        return in_memory_batches(config, process_index, process_count, start=start)
    host_batch = per_host_batch_size(int(config.batch_size), process_count)
    # Samples are decoded to uint8 and batched as uint8 (4x fewer bytes to stack and to send between
    # processes); float32 is then one table lookup over the whole batch, equal to the per-sample path.
    decoder = SampleDecoder(image_size=int(config.image_size), context_length=int(config.context_length),
                            train_scale=tuple(config.train_scale), image_dtype="uint8")
    if in_global_order(config):
        source = random_access_source(config)
        ds = global_order.host_batches(
            source, seed=int(config.seed), shuffle=bool(config.shuffle) and config.source != "synth",
            num_epochs=config.get("num_epochs", None), global_batch_size=int(config.batch_size),
            process_index=process_index, process_count=process_count, start=int(start), decoder=decoder,
            train=bool(config.train), max_consecutive_bad=int(config.max_consecutive_bad))
        threads = int(config.get("read_threads", 0))
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(1, 2 * threads)))
    else:
        records = source_records(config, process_index, process_count)
        ds = DecodeIterDataset(
            records, image_size=int(config.image_size), context_length=int(config.context_length),
            train=bool(config.train), seed=int(config.seed), train_scale=tuple(config.train_scale),
            max_consecutive_bad=int(config.max_consecutive_bad), warn_interval_s=float(config.warn_interval_s),
            image_dtype="uint8",
        )
        ds = ds.batch(host_batch, drop_remainder=bool(config.drop_remainder))
    workers = worker_count(config) if workers is None else int(workers)
    if workers > 0:
        # grain starts its workers with the "spawn" method (a fresh interpreter, never os.fork), so a
        # process that already holds a JAX runtime can use them (tests/data/test_workers.py checks it).
        _absl_flags_with_defaults()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                         per_worker_buffer_size=int(config.worker_buffer_size)),
                            worker_init_fn=_data_worker_init)
    if image_dtype == "float32":
        # After the workers: they ship uint8 (4x fewer bytes between processes), and the lookup is cheap.
        ds = ds.map(normalize_batch)
    if int(config.get("prefetch", 0)) > 0:
        # A thread in the main process keeps batches ready while the step runs (decode, resize and JAX
        # release the GIL). Its state is the state of the batch last handed out, so resume stays exact.
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=int(config.prefetch))
    return ds


def in_global_order(config) -> bool:
    """Whether ``build_dataset`` serves the global sample order (positioned by samples seen, any host count):
    the in-memory path and random-access sources, except a finite pass that keeps its partial last batch."""
    if bool(config.get("in_memory", False)):
        return True
    finite_pass = config.get("num_epochs", None) is not None and not bool(config.drop_remainder)
    return str(config.source) != "webdataset" and not finite_pass


def _absl_flags_with_defaults() -> None:
    """Grain's worker processes read absl flags; outside an absl app nobody parsed them, so use defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _exit_with_parent(poll_s: float = 0.5) -> None:
    """A worker whose trainer died (SIGKILL, the OOM killer, a scheduler's kill) exits instead of decoding on as an
    orphan: a daemon thread watches the parent process id (grain's workers do not notice on their own)."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="vlscale-exit-with-parent", daemon=True).start()


def _data_worker_init(worker_index: int, worker_count: int) -> None:
    """First thing in every grain worker process: keep any JAX use in a data worker on the CPU.

    The workers are spawned interpreters that import grain (and with it jax). Nothing in the pipeline
    needs a device, but a worker that initialised the default backend would claim the host's GPU memory
    or TPU chips the trainer owns.
    """
    del worker_index, worker_count
    _exit_with_parent()
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_platforms", "cpu")
