"""The array checksums recorded in each checkpoint: summed shard by shard (any sharding, replicated blocks once)
they equal the sums over the whole array, and any single flipped bit or swapped pair of elements changes them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vlscale.runtime import integrity


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "f32": rng.standard_normal((7, 33)).astype(np.float32),
        "bf16": np.asarray(jnp.asarray(rng.standard_normal((5, 9)), dtype=jnp.bfloat16)),
        "i32": rng.integers(-1000, 1000, size=(64,)).astype(np.int32),
        "u8": rng.integers(0, 256, size=(3, 4, 5)).astype(np.uint8),
        "bool": rng.random(17) > 0.5,
        "scalar": np.int32(-1),
    }


def test_device_and_host_checksums_agree_for_every_dtype():
    host = _arrays()
    on_host = integrity.checksums(host)
    on_device = integrity.checksums(jax.tree.map(jnp.asarray, host))
    assert on_host == on_device
    assert set(on_host) == set(host) and all(len(v) == 2 for v in on_host.values())


@pytest.mark.parametrize("spec", [P("data"), P(None, "data"), P("data", "model"), P()])
def test_a_sharded_array_has_the_checksum_of_the_whole(spec):
    rng = np.random.default_rng(2)
    mesh = jax.make_mesh((len(jax.devices()) // 2, 2), ("data", "model"))
    for x in (rng.standard_normal((8, 12)).astype(np.float32),
              np.asarray(jnp.asarray(rng.standard_normal((8, 12)), dtype=jnp.bfloat16))):
        sharded = jax.device_put(x, NamedSharding(mesh, spec))
        assert len(sharded.addressable_shards) == len(jax.devices()) > 1
        assert integrity.checksums({"x": sharded}) == {"x": list(integrity.checksum_np(x))}


@pytest.mark.parametrize("index,bit", [(0, 0), (5, 31), (100, 17), (230, 1)])
def test_one_flipped_bit_changes_the_checksum(index, bit):
    x = np.random.default_rng(1).standard_normal(231).astype(np.float32)
    words = x.view(np.uint32).copy()
    words[index] ^= np.uint32(1 << bit)
    h, g = integrity.checksum_np(x), integrity.checksum_np(words.view(np.float32))
    assert h[0] != g[0] and h[1] != g[1]


def test_swapped_elements_and_nan_payloads_change_the_checksum():
    x = np.arange(10, dtype=np.float32)
    y = x.copy()
    y[[2, 7]] = y[[7, 2]]
    assert integrity.checksum_np(x) != integrity.checksum_np(y)
    nan_a = np.array([np.nan], dtype=np.float32)
    nan_b = np.array([0x7FC00001], dtype=np.uint32).view(np.float32)
    assert integrity.checksum_np(nan_a) != integrity.checksum_np(nan_b)


def test_mismatches_name_the_leaves_and_use_the_prefix():
    params = {"visual": {"proj": np.ones((2, 2), np.float32)}, "text": {"emb": np.zeros(3, np.float32)}}
    recorded = integrity.record({"params": params, "step": np.int32(4)})
    assert integrity.mismatches(recorded, params, prefix="params/") == []
    params["visual"]["proj"][1, 1] = 2.0
    assert integrity.mismatches(recorded, params, prefix="params/") == ["params/visual/proj"]
    assert integrity.mismatches(recorded, params) == ["text/emb", "visual/proj"]  # no such names recorded
