"""registry.init_params: the same parameters whatever the sharding, created directly in their shards."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from vlscale.models import registry


@pytest.mark.skipif(jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
def test_sharded_init_equals_the_unsharded_init():
    from vlscale.runtime.sharding import logical_to_sharding, make_mesh

    model = registry.build_model("shapes-clip-XS")
    mesh = make_mesh(data=2, fsdp=4, devices=jax.devices()[:8])
    shapes = registry.param_shapes(model)
    shardings = logical_to_sharding(registry.param_logical_axes(model), mesh, shapes=shapes)
    sharded = registry.init_params_sharded(model, 3, shardings)
    plain = registry.init_params(model, 3)
    token = sharded["token_embedding"]["embedding"]
    assert token.sharding.spec == PartitionSpec("tensor", "fsdp")  # [vocab, embed]: embed split 4 ways
    assert token.addressable_shards[0].data.shape == (49408, 8)
    flat_sharded = jax.tree_util.tree_leaves_with_path(sharded)
    for (path, a), want, spec in zip(flat_sharded, jax.tree.leaves(plain), jax.tree.leaves(shardings)):
        assert a.sharding == spec, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(want), err_msg=jax.tree_util.keystr(path))
    # No device holds a full replica while initialising: outputs are one shard each, and temporaries (threefry's
    # counters and bits for one shard of the 49408 x 32 token embedding) stay below the whole model, which an
    # unpartitioned generator (rbg) would exceed by materialising that embedding whole.
    compiled = registry._jitted_init(model, registry._hashable(shardings),
                                     tuple(sorted((registry.init_compiler_options(model) or {}).items())))
    memory = compiled.lower(jax.random.key(3)).compile().memory_analysis()
    total = 4 * registry.count_params(shapes)
    assert memory.output_size_in_bytes < 0.3 * total and memory.temp_size_in_bytes < 0.8 * total
    # Same seed, same values: the executable is reused; another seed gives other values.
    again = registry.init_params(model, 3)
    np.testing.assert_array_equal(again["text_projection"], plain["text_projection"])
    assert not np.array_equal(registry.init_params(model, 4)["text_projection"], plain["text_projection"])
