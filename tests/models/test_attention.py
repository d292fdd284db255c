"""Fused attention paths against the einsum reference: padding with key masking (values and gradients at CLIP's
lengths), JAX's Pallas TPU flash kernel in interpret mode, the "auto" choice per platform, the symbolic causal mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from vlscale.models import attention


def _qkv(lq, lk=None, batch=2, heads=2, head_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    lk = lq if lk is None else lk
    q = rng.normal(size=(batch, lq, heads, head_dim))
    k, v = (rng.normal(size=(batch, lk, heads, head_dim)) for _ in range(2))
    return tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))


def _value_and_grads(fn, q, k, v):
    """The output and d(sum(out * w))/d(q, k, v) for a fixed random w (every output element matters)."""
    w = jnp.asarray(np.random.default_rng(1).normal(size=fn(q, k, v).shape), jnp.float32)
    return fn(q, k, v), jax.grad(lambda *a: jnp.sum(fn(*a) * w), argnums=(0, 1, 2))(q, k, v)


def _assert_same(fn, ref, q, k, v, atol=1e-5):
    out, grads = _value_and_grads(jax.jit(fn), q, k, v)
    want, want_grads = _value_and_grads(jax.jit(ref), q, k, v)
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want, atol=atol, rtol=1e-5)
    for name, g, wg in zip("qkv", grads, want_grads):
        np.testing.assert_allclose(g, wg, atol=atol, rtol=1e-5, err_msg=f"d{name}")


def _reference(mask):
    return lambda q, k, v: attention.dot_product_attention(q, k, v, mask=mask, implementation="xla")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("length", [50, 77, 197, 257])
def test_padded_attention_matches_einsum_at_clip_lengths(length, causal):
    """jax.nn.dot_product_attention (its XLA implementation, what runs on CPU) on q/k/v padded to a multiple of 64
    with the padded keys masked equals the unpadded einsum, values and gradients, at ViT-B-32 (50), text (77),
    ViT-B-16 (197) and ViT-L-14 (257) lengths."""
    q, k, v = _qkv(length)
    mask = attention.causal_mask(length) if causal else None
    fused = lambda q, k, v: attention.fused_attention(q, k, v, mask, jnp.float32, "xla", multiple=64)  # noqa
    _assert_same(fused, _reference(mask), q, k, v)
    assert attention.PAD_MULTIPLE == {"cudnn": 64, "pallas": 128}


def test_padded_attention_cross_key_mask_and_general_mask():
    """Cross-attention (77 text queries onto 50 image keys, each padded on its own), MaMMUT's key mask
    [1, 1, 1, Lk] (the padded bidirectional text pass) and an arbitrary [B, 1, Lq, Lk] mask."""
    q, k, v = _qkv(77, 50)
    fused = lambda q, k, v: attention.fused_attention(q, k, v, None, jnp.float32, "xla", multiple=64)  # noqa
    _assert_same(fused, _reference(None), q, k, v)

    q, k, v = _qkv(80)
    key_mask = (jnp.arange(80) < 77)[None, None, None, :]
    fused = lambda q, k, v: attention.fused_attention(q, k, v, key_mask, jnp.float32, "xla", multiple=64)  # noqa
    _assert_same(fused, _reference(key_mask), q, k, v)

    rng = np.random.default_rng(2)
    general = jnp.asarray(rng.random((2, 1, 50, 50)) < 0.6) | jnp.eye(50, dtype=bool)[None, None]
    q, k, v = _qkv(50)
    fused = lambda q, k, v: attention.fused_attention(q, k, v, general, jnp.float32, "xla", multiple=64)  # noqa
    _assert_same(fused, _reference(general), q, k, v)


@pytest.mark.parametrize("lq,lk,causal", [(50, 50, False), (77, 77, True), (13, 50, False)])
def test_pallas_flash_matches_einsum_in_interpret_mode(lq, lk, causal):
    """JAX's Pallas TPU flash attention (jax.experimental.pallas.ops.tpu.flash_attention), run on CPU in TPU
    interpret mode, on lengths padded to 128 with the padded keys as a second segment: values and gradients
    equal the einsum's (vision self-attention, causal text, MaMMUT's cross-attention)."""
    q, k, v = _qkv(lq, lk, batch=1)
    mask = attention.causal_mask(lq) if causal else None
    fused = lambda q, k, v: attention.dot_product_attention(q, k, v, mask=mask, implementation="pallas")  # noqa
    with pltpu.force_tpu_interpret_mode():
        _assert_same(fused, _reference(mask), q, k, v)


def test_pallas_key_mask_and_general_mask_fallback():
    """A key mask becomes a segment id (interpret mode); a general mask, which the flash kernel cannot take, runs
    the einsum."""
    q, k, v = _qkv(24, batch=1)
    key_mask = (jnp.arange(24) < 21)[None, None, None, :]
    fused = lambda q, k, v: attention.dot_product_attention(q, k, v, mask=key_mask, implementation="pallas")  # noqa
    with pltpu.force_tpu_interpret_mode():
        _assert_same(fused, _reference(key_mask), q, k, v)
    general = jnp.tril(jnp.ones((24, 24), bool), k=-1)[None, None] | jnp.eye(24, dtype=bool)[None, None]
    general = general.at[..., 0].set(False).at[0, 0, 0, 0].set(True)
    got = attention.dot_product_attention(q, k, v, mask=general, implementation="pallas")
    np.testing.assert_array_equal(got, attention.dot_product_attention(q, k, v, mask=general))


def test_auto_picks_a_kernel_per_platform():
    r = attention.resolve_attention
    assert r("auto", jnp.float32, "cpu") == "xla"
    assert r("auto", jnp.bfloat16, "cpu") == "xla"
    assert r("auto", jnp.bfloat16, "gpu", head_dim=64) == "cudnn"
    assert r("auto", "bfloat16", "cuda") == "cudnn"
    assert r("auto", jnp.float32, "gpu") == "xla"  # cuDNN's fused kernel takes bf16/fp16 only
    assert r("auto", jnp.bfloat16, "gpu", head_dim=12) == "xla"  # head dim not a multiple of 8
    assert r("auto", jnp.float32, "tpu") == "pallas"
    assert r("cudnn", jnp.float32, "cpu") == "cudnn"  # an explicit choice is kept
    assert r("auto") == "xla"  # this test runs on CPU
    with pytest.raises(ValueError, match="flash"):
        r("flash")


def test_causal_mask_is_a_leafless_pytree_that_converts_to_the_mask():
    m = attention.causal_mask(4)
    assert jax.tree_util.tree_leaves(m) == []
    assert jax.tree_util.tree_unflatten(*reversed(jax.tree_util.tree_flatten(m))) == m
    np.testing.assert_array_equal(np.asarray(m)[0, 0], np.tril(np.ones((4, 4), bool)))
    assert m.shape == (1, 1, 4, 4)
    with pytest.raises(ValueError, match="causal"):
        attention.fused_attention(*_qkv(4, 6), m, jnp.float32, "xla")


def test_models_with_fused_attention_match_xla():
    """CLIP (causal text, scanned layers) and MaMMUT with attention="pallas" in interpret mode and attention="auto"
    (XLA on CPU, with remat) give the same features and logits as attention="xla". (TPU interpret mode runs the
    kernel through I/O callbacks, which ``remat`` cannot partially evaluate, so the Pallas model runs without.)"""
    from vlscale.models import registry

    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
    for name in ("shapes-clip-XS", "shapes-mammut-XS"):
        plain = registry.build_model(name, scan_layers=True)
        params = registry.init_params(plain, 0)
        ctx = plain.config.context_length
        tokens = jnp.asarray(rng.integers(1, 1000, size=(2, ctx)), jnp.int32)
        want = jax.jit(plain.apply)({"params": params}, images, tokens)
        for impl, remat in (("auto", "block"), ("pallas", "none")):
            model = registry.build_model(name, attention=impl, scan_layers=True, remat=remat)
            with pltpu.force_tpu_interpret_mode():
                got = jax.jit(model.apply)({"params": params}, images, tokens)
            for key in want:
                if want[key] is not None and key != "logit_scale":
                    np.testing.assert_allclose(got[key], want[key], atol=2e-5, err_msg=f"{name} {impl} {key}")


def test_pallas_kernel_runs_per_device_under_a_mesh(monkeypatch):
    """Under the trainer's mesh (data 2 x fsdp 2 x tensor 2 on 8 CPU devices) the Pallas kernel runs inside
    shard_map on each device's batch and heads ([1, 128, 1, 8] of [4, 50, 2, 8]), values and gradients as the
    einsum's."""
    from vlscale.runtime import sharding

    seen = []
    kernel = attention._pallas_flash

    def recording(q, k, v, kv_valid, **kw):
        seen.append(q.shape)
        return kernel(q, k, v, kv_valid, **kw)

    monkeypatch.setattr(attention, "_pallas_flash", recording)
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    q, k, v = _qkv(50, batch=4)
    fused = lambda q, k, v: attention.dot_product_attention(q, k, v, implementation="pallas")  # noqa: E731
    with sharding.activation_sharding(mesh), pltpu.force_tpu_interpret_mode():
        _assert_same(fused, _reference(None), q, k, v)
    assert set(seen) == {(1, 128, 1, 8)}
