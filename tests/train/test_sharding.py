"""Sharding by logical-axis rules on a (2, 2, 2) mesh of 8 fake CPU devices gives the unsharded results."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vlscale.models import registry
from vlscale.runtime import sharding


def test_rules_resolve_parameters_and_activations():
    assert sharding.logical_to_mesh_spec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)
    assert sharding.logical_to_mesh_spec(("embed", "heads", "kv")) == P("fsdp", "tensor", None)
    assert sharding.logical_to_mesh_spec(("vocab", "embed")) == P("tensor", "fsdp")
    assert sharding.logical_to_mesh_spec(("layers", "mlp", "embed")) == P(None, "tensor", "fsdp")


def test_make_mesh_fills_the_data_axis():
    assert len(jax.devices()) == 8
    assert dict(sharding.make_mesh(fsdp=2, tensor=2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(sharding.make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="cannot be split"):
        sharding.make_mesh(fsdp=3)


@pytest.mark.parametrize("name", ["tiny-clip", "tiny-mammut"])
def test_sharded_encoders_match_unsharded(name):
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    model = registry.build_model(name)
    shapes = registry.param_shapes(model)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes)
    shardings = sharding.logical_to_sharding(registry.param_logical_axes(model), mesh, shapes=shapes)
    sharded = jax.device_put(params, shardings)
    cfg = model.config
    images = rng.normal(size=(4, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    tokens = rng.integers(1, 49406, size=(4, cfg.context_length)).astype(np.int32)
    tokens[:, 0], tokens[:, 9] = 49406, 49407

    def encode(p, images, tokens):
        img = model.apply({"params": p}, images, method="encode_image")
        txt = model.apply({"params": p}, tokens, method="encode_text")
        return img, txt

    ref_img, ref_txt = jax.jit(encode)(params, images, tokens)
    with sharding.activation_sharding(mesh):
        img_s = jax.device_put(images, sharding.batch_sharding(mesh, 4))
        tok_s = jax.device_put(tokens, sharding.batch_sharding(mesh, 2))
        img, txt = jax.jit(encode)(sharded, img_s, tok_s)
    np.testing.assert_allclose(img, ref_img, atol=1e-5)
    np.testing.assert_allclose(txt, ref_txt, atol=1e-5)
    # The parameters really are split: the 49408 x 64 token table over tensor x fsdp = 4 ways.
    emb = sharded["token_embedding"]["embedding"] if name == "tiny-clip" else \
        sharded["text"]["token_embedding"]["embedding"]
    assert emb.sharding.spec == P("tensor", "fsdp")
    assert emb.addressable_shards[0].data.shape == (49408 // 2, 64 // 2)
