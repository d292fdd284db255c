"""The data pipeline's ConfigDict (``vlscale.data.iterator.make_iterator`` reads it).

``get_config("synth")`` (the default), ``"webdataset"``, ``"tfds"`` or ``"folder"`` pick the source; every
field is overridable from the command line in the usual ml_collections way.
"""

from __future__ import annotations

import ml_collections

from vlscale.data.samples import DEFAULT_MAX_BAD_FRACTION
from vlscale.data.synth_scene import SynthConfig

TRAIN_SCALE = (0.9, 1.0)  # open_clip RandomResizedCrop scale used for the paper's runs (models/transforms.py)


def get_config(source: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.source = source or "synth"  # synth | webdataset | tfds | folder

    # Sources.
    c.shards = ""  # webdataset: path, glob, brace range "shards/{00000..01023}.tar", or a directory
    c.synth = ml_collections.ConfigDict()
    c.synth.seed = 0
    c.synth.split = "train"
    # Every SynthConfig field with its default (docs/data.md), so each is a real, typed config field:
    # `vlscale train --config.data.synth.knobs.p_mention_colour=0.5`, study `datasets.<name>.overrides`.
    c.synth.knobs = ml_collections.ConfigDict(SynthConfig().to_dict())
    c.tfds = ml_collections.ConfigDict()
    c.tfds.name = ""  # e.g. "coco_captions" or "imagenet2012" (prepared locally as array_record)
    c.tfds.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.tfds.split = "train"
    c.tfds.image_key = "image"
    c.tfds.caption_key = ml_collections.FieldReference(None, field_type=str)  # a text feature, or
    c.tfds.label_key = "label"  # a class label turned into text with the template
    c.tfds.caption_template = "a photo of a {}."
    c.folder = ml_collections.ConfigDict()
    c.folder.captions_file = ""  # CSV or JSONL with image_path and caption columns
    c.folder.root = ml_collections.FieldReference(None, field_type=str)  # image paths are relative to this
    c.folder.image_column = "image_path"
    c.folder.caption_column = "caption"

    # Preprocessing.
    c.image_size = 64  # model input side; the paper's models use 224, the CPU demo 32-64
    c.context_length = 77  # models/tokenizer.py CONTEXT_LENGTH
    c.train = True  # RandomResizedCrop (train) or resize + centre crop (eval)
    c.train_scale = TRAIN_SCALE
    # uint8 (default): resized/cropped pixels; the consumer normalises them on the device with
    # vlscale.data.normalize.normalize_images (the same float32 arithmetic), which keeps the loader faster
    # than open_clip's per core. "float32": normalised on the host, the models' input as it is.
    c.image_dtype = "uint8"

    # Small datasets (the CPU demo): decode, resize and tokenise once, then serve batches from RAM.
    c.in_memory = False
    c.in_memory_samples = 20_000  # synthetic stream only: how many samples to draw and hold
    # Rendered in-memory synthetic sets are kept here, so a study draws each set once (data/array_cache.py).
    # "" = $VLSCALE_DATA_CACHE or ~/.cache/vlscale/data; "none" = no files (this process still reuses them).
    c.cache_dir = ""

    # Order and batching.
    c.batch_size = 256  # global; each host gets batch_size / process_count
    c.seed = 0
    c.shuffle = True
    c.shuffle_window = 1000  # webdataset: samples in the shuffle buffer
    c.cycle_length = 4  # webdataset: shards open at once per worker
    c.num_epochs = ml_collections.FieldReference(None, field_type=int)  # None: repeat forever
    c.drop_remainder = True

    # Workers: -1 = sized from the host's cores and local devices (0 on a 2-core box; data/config_fields.py
    # worker_count); 0 = decode in the main process; N = that many spawned processes. Not part of a run's
    # identity: a resume with another count continues the same samples (global order).
    c.worker_count = -1
    c.worker_buffer_size = 2
    c.prefetch = 2  # batches a main-process thread keeps ready (0: none)
    c.read_threads = 0  # random-access sources: reader threads per process (raise for remote storage)

    # Bad input.
    c.max_bad_fraction = DEFAULT_MAX_BAD_FRACTION
    c.bad_fraction_min_samples = 1000  # the fraction is checked only after this many records
    c.max_consecutive_bad = 1000
    c.warn_interval_s = 30.0

    # Host simulation (None: jax.process_index() / jax.process_count()).
    c.process_index = ml_collections.FieldReference(None, field_type=int)
    c.process_count = ml_collections.FieldReference(None, field_type=int)
    return c
