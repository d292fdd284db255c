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


def test_an_fsdp_axis_that_does_not_divide_its_dimension_moves_to_the_largest_one_it_divides():
    mesh = sharding.make_mesh(1, 8, 1)
    # embed 12 is not a multiple of 8: fsdp goes to the MLP dimension (64), after the tensor axis already there
    assert sharding.logical_to_mesh_spec(("embed", "mlp"), shape=(12, 64), mesh=mesh) == P(None, ("tensor", "fsdp"))
    # the largest dimension it divides wins (48 before 16; 36 is not a multiple of 8), never a scanned layer stack
    assert sharding.logical_to_mesh_spec(("embed", "heads", "kv"), shape=(12, 16, 48), mesh=mesh) == \
        P(None, "tensor", "fsdp")
    assert sharding.logical_to_mesh_spec(("embed", "heads", "kv"), shape=(12, 36, 16), mesh=mesh) == \
        P(None, "tensor", "fsdp")
    assert sharding.logical_to_mesh_spec(("layers", "embed", "mlp"), shape=(8, 12, 36), mesh=mesh) == \
        P(None, None, "tensor")
    # no dimension fits: the array stays whole along fsdp, and the caller learns which axis of which dimension
    unplaced = []
    assert sharding.logical_to_mesh_spec(("embed",), shape=(12,), mesh=mesh, unplaced=unplaced) == P(None)
    assert unplaced == [("fsdp", 0)]
    # tensor splits are where the rules put them or nowhere (heads 3 on tensor=2): recorded, not moved
    mesh = sharding.make_mesh(1, 4, 2)
    unplaced = []
    assert sharding.logical_to_mesh_spec(("embed", "heads", "kv"), shape=(64, 3, 32), mesh=mesh,
                                         unplaced=unplaced) == P("fsdp", None, None)
    assert unplaced == [("tensor", 1)]


def test_vit_h_14_replicated_share_on_256_and_512_devices():
    # The case: ViT-H-14 at fsdp=512 kept 64 % of its parameter bytes whole when fsdp was simply dropped.
    from jax.sharding import AbstractMesh

    model = registry.build_model("ViT-H-14", scan_layers=True)
    axes, shapes = registry.param_logical_axes(model), registry.param_shapes(model)

    def share(*sizes):
        return sharding.replication(axes, shapes, AbstractMesh(sizes, sharding.MESH_AXES))

    at_256 = share(1, 256, 1)
    assert at_256["replicated_share"] < 0.001  # biases of the MLP hidden layer (tensor-only) and the like
    at_512 = share(1, 512, 1)
    # attention kernels [layers, 1280, 16 heads, 80]: no dimension is a multiple of 512
    assert 0.21 < at_512["replicated_share"] < 0.22
    assert at_512["arrays"][0] == ("['visual']['transformer']['resblocks']['attn']['key']['kernel']",
                                   (32, 1280, 16, 80), 1, ["fsdp"])
    assert share(1, 256, 2)["replicated_share"] < 0.003  # the same 512 devices as fsdp=256 x tensor=2


def test_params_hash_does_not_depend_on_the_sharding():
    from vlscale.runtime import checkpoint

    model = registry.build_model("tiny-clip")
    host = jax.tree.map(np.asarray, registry.init_params(model, 0))
    want = checkpoint.sha256_of_params(host)
    axes = registry.param_logical_axes(model)
    for sizes in ((8, 1, 1), (1, 8, 1), (1, 4, 2), (2, 2, 2)):
        mesh = sharding.make_mesh(*sizes)
        placed = jax.device_put(host, sharding.logical_to_sharding(axes, mesh, shapes=host))
        assert checkpoint.sha256_of_params(placed) == want, sizes
    # a different value changes it
    leaves, tree = jax.tree.flatten(host)
    leaves[0] = leaves[0] + 1
    assert checkpoint.sha256_of_params(jax.tree.unflatten(tree, leaves)) != want
