"""The grain input pipeline, composed: source -> host shard -> shuffle -> repeat -> decode/transform/tokenise ->
per-host batch -> worker processes -> normalise -> prefetch; ``iterator.DataIterator`` turns it into host
batches (bad-sample guard, exact accounting, state) and global arrays on the mesh.

The stages live in their own modules: ``records`` (source dispatch and host sharding), ``decode`` (records to
samples, bad ones skipped and counted), ``normalize`` (uint8 to float32), ``in_memory`` (small datasets decoded
once and served from memory, ``config.in_memory``).

Every stage keeps a small, JSON-serialisable iterator state, so a restored pipeline emits exactly the
batches an uninterrupted run would have (see ``DataIterator.get_state`` and docs/data.md for the layout).
"""

from __future__ import annotations

import os

import grain

from vlscale.data.config_fields import per_host_batch_size
from vlscale.data.decode import DecodeIterDataset
from vlscale.data.in_memory import in_memory_batches
from vlscale.data.normalize import IMAGE_DTYPES, normalize_batch
from vlscale.data.records import source_records
from vlscale.errors import UserError


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
        ds = ds.map(normalize_batch)
    if int(config.get("prefetch", 0)) > 0:
        # A thread in the main process keeps batches ready while the step runs (decode, resize and JAX
        # release the GIL). Its state is the state of the batch last handed out, so resume stays exact.
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=int(config.prefetch))
    return ds


def _absl_flags_with_defaults() -> None:
    """Grain's worker processes read absl flags; outside an absl app nobody parsed them, so use defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


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
