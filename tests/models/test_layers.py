"""Shared layers: LayerNorm/GELU numerics, KV-cache decoding, scan vs unrolled stacks, remat, logical axes, and
open_clip's from-scratch initialisation statistics (reference §4)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from vlscale.models import attention, layer_layout, layers, registry, transformer
from vlscale.models.config import INIT_LOGIT_SCALE, get_config, with_depth


def random_params(shapes, seed=0):
    """Numpy parameters of the given shapes (no init compile): N(0, 0.1), LayerNorm scales around 1."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        a = rng.normal(0, 0.1, s.shape).astype(np.float32)
        return a + 1 if path[-1].key == "scale" else a

    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_layer_norm_matches_torch_with_eps_1e5():
    import torch

    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 2.0, (2, 5, 16)).astype(np.float32)
    scale, bias = rng.normal(1, 0.1, 16).astype(np.float32), rng.normal(0, 0.1, 16).astype(np.float32)
    ln = layers.LayerNorm()
    params = {"params": {"scale": scale, "bias": bias}}
    y = np.asarray(ln.apply(params, x))
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x), (16,), torch.from_numpy(scale),
                                         torch.from_numpy(bias), eps=1e-5).numpy()
    np.testing.assert_allclose(y, ref, atol=1e-6)
    assert ln.apply(params, jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16


def test_mlp_uses_exact_gelu():
    mlp = layers.Mlp(width=4, hidden=8)
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    p = {"params": {"c_fc": {"kernel": np.eye(4, 8, dtype=np.float32), "bias": np.zeros(8, np.float32)},
                    "c_proj": {"kernel": np.eye(8, 4, dtype=np.float32), "bias": np.zeros(4, np.float32)}}}
    exact = 0.5 * x * (1 + erf(x / math.sqrt(2)))
    np.testing.assert_allclose(np.asarray(mlp.apply(p, x)), exact, atol=1e-6)


def test_causal_mask_allows_only_the_past():
    m = np.asarray(attention.causal_mask(4))[0, 0]
    assert m.tolist() == [[True, False, False, False], [True, True, False, False],
                          [True, True, True, False], [True, True, True, True]]


def module_params(module, *args, seed=0, **kwargs):
    """Random parameters for a module from eval_shape of its init (no RNG kernels to compile)."""
    shapes = jax.eval_shape(lambda k: nn.meta.unbox(module.init(k, *args, **kwargs)), jax.random.key(0))
    return random_params(shapes, seed)


def test_self_attention_kv_cache_matches_the_causal_forward():
    block = transformer.ResidualAttentionBlock(32, 4)
    x = jax.random.normal(jax.random.key(1), (2, 6, 32))
    v = module_params(block, x)

    @jax.jit
    def run(v, x):
        full = block.apply(v, x, mask=attention.causal_mask(6))
        _, cache = block.apply(v, jnp.zeros_like(x), decode=True, mutable=["cache"])  # allocate [B, 6, H, hd]
        outs = []
        for chunk in (x[:, :3], x[:, 3:4], x[:, 4:5], x[:, 5:]):  # a 3-token prefill, then single steps
            y, cache = block.apply({**v, **cache}, chunk, decode=True, mutable=["cache"])
            outs.append(y)
        return full, jnp.concatenate(outs, 1), cache["cache"]["attn"]["cache_index"]

    full, stepped, index = run(v, x)
    np.testing.assert_allclose(stepped, full, atol=1e-5)
    assert int(index) == 6


def test_cross_attention_caches_image_keys_once():
    block = transformer.ResidualAttentionBlock(32, 4, is_cross=True)
    x = jax.random.normal(jax.random.key(1), (2, 5, 32))
    img = jax.random.normal(jax.random.key(2), (2, 9, 32))
    v = module_params(block, x, kv=img)
    assert set(v["params"]) == {"ln_1", "ln_1_kv", "attn", "ln_2", "mlp"}

    @jax.jit
    def run(v, x, img):
        full = block.apply(v, x, kv=img)
        y0, cache = block.apply(v, x[:, :2], kv=img, decode=True, mutable=["cache"])
        y1, _ = block.apply({**v, **cache}, x[:, 2:], decode=True, mutable=["cache"])  # kv=None: cached keys
        return full, jnp.concatenate([y0, y1], 1)

    full, stepped = run(v, x, img)
    np.testing.assert_allclose(stepped, full, atol=1e-5)
    with pytest.raises(ValueError, match="cached image keys"):
        jax.eval_shape(lambda v: block.apply(v, x, decode=True, mutable=["cache"]), v)


def test_block_without_mlp_and_with_layer_scale():
    x = jnp.ones((1, 3, 16))
    assert set(module_params(transformer.ResidualAttentionBlock(16, 2, has_mlp=False), x)["params"]) == {"ln_1", "attn"}
    ls = module_params(transformer.ResidualAttentionBlock(16, 2, ls_init_value=1e-4), x)["params"]
    assert set(ls) == {"ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2"}
    gamma = nn.meta.unbox(layers.LayerScale(1e-4).init(jax.random.key(0), x))["params"]["gamma"]
    assert np.all(np.asarray(gamma) == np.float32(1e-4))


@pytest.fixture(scope="module")
def tiny_inputs():
    cfg = get_config("tiny-clip-ls")
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    tokens = np.zeros((2, cfg.context_length), np.int32)
    tokens[0, :4] = [49406, 320, 1125, 49407]
    tokens[1, :6] = [49406, 1929, 533, 320, 2368, 49407]
    return images, tokens


@pytest.fixture(scope="module")
def tiny_reference(tiny_inputs):
    """Unrolled float32 tiny-clip-ls: (params, outputs)."""
    model = registry.build_model("tiny-clip-ls")
    params = random_params(registry.param_shapes(model))
    return params, jax.jit(model.apply)({"params": params}, *tiny_inputs)


def test_scan_and_unrolled_give_the_same_outputs(tiny_inputs, tiny_reference):
    params, ref = tiny_reference
    scanned = registry.build_model("tiny-clip-ls", scan_layers=True)
    stacked = layer_layout.to_layout(params, "tiny-clip-ls", scan_layers=True)
    assert jax.tree.map(np.shape, stacked) == jax.tree.map(lambda s: s.shape, registry.param_shapes(scanned))
    out = jax.jit(scanned.apply)({"params": stacked}, *tiny_inputs)
    for k in ("image_features", "text_features"):
        np.testing.assert_allclose(out[k], ref[k], atol=1e-5)
    back = layer_layout.to_layout(stacked, "tiny-clip-ls", scan_layers=False)
    assert jax.tree.all(jax.tree.map(np.array_equal, back, params))


def test_remat_keeps_the_gradients():
    x = jax.random.normal(jax.random.key(1), (2, 5, 32))
    grads = []
    for remat in ("none", "full"):
        stack = transformer.Transformer(32, 2, 4, remat=remat)
        if remat == "none":
            params = module_params(stack, x)
        grads.append(jax.jit(jax.grad(lambda p: jnp.sum(stack.apply(p, x) ** 2)))(params))
    for g in grads[1:]:
        for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(g)):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_bfloat16_compute_keeps_fp32_features(tiny_inputs, tiny_reference):
    params, ref = tiny_reference
    out = jax.jit(registry.build_model("tiny-clip-ls", dtype="bfloat16").apply)({"params": params}, *tiny_inputs)
    assert out["image_features"].dtype == jnp.float32  # features come back in fp32 for the loss
    assert np.abs(out["image_features"] - ref["image_features"]).max() < 0.05
    assert np.abs(out["text_features"] - ref["text_features"]).max() < 0.05


def test_every_parameter_has_logical_axes():
    for name in ("tiny-clip-ls", "tiny-mammut"):
        for scan in (False, True):
            model = registry.build_model(name, scan_layers=scan)
            axes = registry.param_logical_axes(model)
            shapes = registry.param_shapes(model)
            flat_axes = jax.tree.leaves(axes, is_leaf=lambda a: isinstance(a, jax.sharding.PartitionSpec))
            flat_shapes = jax.tree.leaves(shapes)
            assert len(flat_axes) == len(flat_shapes)
            for spec, s in zip(flat_axes, flat_shapes):
                assert isinstance(spec, jax.sharding.PartitionSpec) and len(spec) == len(s.shape)
    axes = registry.param_logical_axes(registry.build_model("tiny-clip", scan_layers=True))
    assert tuple(axes["visual"]["transformer"]["resblocks"]["attn"]["query"]["kernel"]) == (
        "layers", "embed", "heads", "kv")
    assert tuple(axes["token_embedding"]["embedding"]) == ("vocab", "embed")


@pytest.fixture(scope="module")
def fresh_init():
    """A from-scratch init of a 256-wide CLIP with one block per tower (few tensors: quick to compile)."""
    cfg = with_depth(get_config("small-clip"), vision_layers=1, text_layers=1, name="init-stats")
    return cfg, registry.init_params(registry.build_model(cfg), jax.random.key(0))


def test_clip_init_follows_open_clip(fresh_init):
    cfg, p = fresh_init
    w, layers_ = cfg.text.width, cfg.text.layers
    vw = cfg.vision.width
    blk = p["transformer"]["resblocks_0"]
    vblk = p["visual"]["transformer"]["resblocks_0"]

    def close(a, std, rel=0.05):
        a = np.asarray(a)
        assert abs(a.mean()) < 4 * std / math.sqrt(a.size) + 1e-7
        assert a.std() == pytest.approx(std, rel=rel)

    # CLIP text (TextTransformer.init_parameters): normal inits.
    close(blk["attn"]["query"]["kernel"], w**-0.5)
    close(blk["attn"]["out"]["kernel"], w**-0.5 * (2 * layers_) ** -0.5)
    close(blk["mlp"]["c_fc"]["kernel"], (2 * w) ** -0.5)
    close(blk["mlp"]["c_proj"]["kernel"], w**-0.5 * (2 * layers_) ** -0.5)
    close(p["token_embedding"]["embedding"], 0.02, rel=0.01)
    close(p["positional_embedding"], 0.01, rel=0.1)
    close(p["text_projection"], w**-0.5)
    # MLP biases keep torch's default U(+-1/sqrt(fan_in)); MHA biases are zero.
    b = np.asarray(blk["mlp"]["c_fc"]["bias"])
    assert np.abs(b).max() <= 1 / math.sqrt(w) and np.abs(b).max() > 0.8 / math.sqrt(w)
    assert not np.any(blk["attn"]["query"]["bias"]) and not np.any(blk["attn"]["out"]["bias"])
    # Vision: width^-0.5 randn for class/pos/proj, torch defaults elsewhere (uniform: std = bound / sqrt(3)).
    close(p["visual"]["class_embedding"], vw**-0.5, rel=0.15)
    close(p["visual"]["positional_embedding"], vw**-0.5)
    close(p["visual"]["proj"], vw**-0.5)
    close(vblk["attn"]["key"]["kernel"], math.sqrt(6 / (4 * vw)) / math.sqrt(3))
    close(vblk["attn"]["out"]["kernel"], 1 / math.sqrt(vw) / math.sqrt(3))
    close(vblk["mlp"]["c_proj"]["kernel"], 1 / math.sqrt(4 * vw) / math.sqrt(3))
    p8 = cfg.vision.patch_size
    conv = np.asarray(p["visual"]["conv1"]["kernel"])
    assert np.abs(conv).max() <= 1 / math.sqrt(3 * p8 * p8)
    close(conv, 1 / math.sqrt(3 * p8 * p8) / math.sqrt(3), rel=0.1)
    # LayerNorms 1/0, logit scale ln(1/0.07).
    for ln in (p["ln_final"], vblk["ln_1"], p["visual"]["ln_post"]):
        assert np.all(np.asarray(ln["scale"]) == 1) and not np.any(ln["bias"])
    assert float(p["logit_scale"]) == pytest.approx(INIT_LOGIT_SCALE) == pytest.approx(math.log(1 / 0.07))
    assert np.asarray(p["logit_scale"]).shape == ()


def test_param_dtype_and_attention_runtime_options():
    """bfloat16 parameter storage (logit_scale excepted) and jax.nn.dot_product_attention as the attention."""
    import jax.numpy as jnp

    from vlscale.models.config import RuntimeOptions
    from vlscale.errors import UserError

    with pytest.raises(UserError, match="param_dtype"):
        RuntimeOptions(param_dtype="float16")
    with pytest.raises(UserError, match="attention"):
        RuntimeOptions(attention="flash")
    for name in ("shapes-clip-XS", "shapes-mammut-XS"):
        shapes = registry.param_shapes(registry.build_model(name, param_dtype="bfloat16", dtype="bfloat16"))
        dtypes = {jax.tree_util.keystr(p): x.dtype for p, x in jax.tree_util.tree_leaves_with_path(shapes)}
        assert dtypes.pop("['logit_scale']") == jnp.float32
        assert set(dtypes.values()) == {jnp.dtype(jnp.bfloat16)}, name

    # The attention implementations agree in float32 on a causal and an unmasked case.
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 6, 2, 8)), jnp.float32) for _ in range(3))
    for mask in (None, attention.causal_mask(6)):
        want = attention.dot_product_attention(q, k, v, mask=mask)
        got = attention.dot_product_attention(q, k, v, mask=mask, implementation="dot_product")
        np.testing.assert_allclose(got, want, atol=1e-6)
    # A whole MaMMUT forward (self, causal and cross attention) gives the same outputs with either. Its context (13)
    # is not a multiple of 8, so the fused path pads both text passes; the bidirectional one masks the pad keys.
    from dataclasses import replace

    cfg = get_config("shapes-mammut-XS")
    cfg = replace(cfg, name="mammut-ctx13", text=replace(cfg.text, context_length=13))
    plain, fused = registry.build_model(cfg), registry.build_model(cfg, attention="dot_product")
    params = registry.init_params(plain, 0)
    images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
    tokens = jnp.asarray(rng.integers(1, 49408, size=(2, 13)), jnp.int32)
    want = jax.jit(plain.apply)({"params": params}, images, tokens)
    got = jax.jit(fused.apply)({"params": params}, images, tokens)
    for key in ("image_features", "text_features", "logits"):
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, err_msg=key)
