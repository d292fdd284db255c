"""Tiny synthetic shards shared by the data tests (written once per session, 32 px)."""

import pytest

from vlscale.configs import data as data_config
from vlscale.data import synth_scene, synth_shards

TINY = synth_scene.SynthConfig(image_size=32)
NUM_SHARDS = 4
PER_SHARD = 12


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    paths = synth_shards.write_synth_shards(out, NUM_SHARDS, PER_SHARD, cfg=TINY, seed=7)
    return out, paths


def make_config(source="webdataset", **overrides):
    """The data ConfigDict for tests: tiny images, small batches, no workers, short context."""
    c = data_config.get_config(source)
    c.image_size = 32
    c.context_length = 16
    c.batch_size = 4
    c.shuffle_window = 8
    c.cycle_length = 2
    c.synth.knobs.image_size = 32
    c.bad_fraction_min_samples = 1
    c.prefetch = 0  # tests that need the prefetch thread turn it on
    c.worker_count = 0  # tests that need worker processes ask for them
    c.max_bad_fraction = 1.0
    c.image_dtype = "float32"  # the tests written for the host path; uint8 ones say so
    c.cache_dir = "none"  # no files in the user's cache from tests
    for k, v in overrides.items():
        node = c
        *parents, last = k.split(".")
        for p in parents:
            node = node[p]
        node[last] = v
    return c
