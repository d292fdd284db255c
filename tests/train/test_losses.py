"""Losses against straightforward numpy loops and hand-checkable values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlscale.train import losses


def _np_log_softmax(row):
    row = np.asarray(row, np.float64)
    m = row.max()
    return row - (m + np.log(np.exp(row - m).sum()))


def _np_clip_loss(img, txt, scale):
    logits = scale * np.asarray(img, np.float64) @ np.asarray(txt, np.float64).T
    n = logits.shape[0]
    i2t = [-_np_log_softmax(logits[i])[i] for i in range(n)]
    t2i = [-_np_log_softmax(logits[:, j])[j] for j in range(n)]
    return 0.5 * (np.mean(i2t) + np.mean(t2i))


def _np_caption_loss(logits, labels, pad_id=0):
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if labels[b, t] == pad_id:
                continue
            total -= _np_log_softmax(logits[b, t])[labels[b, t]]
            count += 1
    return total / count


def _normalised(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


def test_clip_loss_matches_numpy(rng):
    img = _normalised(rng.normal(size=(7, 16))).astype(np.float32)
    txt = _normalised(rng.normal(size=(7, 16))).astype(np.float32)
    got = float(losses.clip_loss(img, txt, jnp.float32(14.3)))
    assert got == pytest.approx(_np_clip_loss(img, txt, 14.3), rel=1e-5)


def test_clip_loss_is_symmetric_in_its_two_directions(rng):
    img = _normalised(rng.normal(size=(5, 8))).astype(np.float32)
    txt = _normalised(rng.normal(size=(5, 8))).astype(np.float32)
    assert float(losses.clip_loss(img, txt, 3.0)) == pytest.approx(float(losses.clip_loss(txt, img, 3.0)), rel=1e-6)


def test_clip_loss_hand_values():
    eye = np.eye(4, dtype=np.float32)
    # Identical features, scale 0: every row is uniform over 4 candidates -> log 4.
    assert float(losses.clip_loss(eye, eye, 0.0)) == pytest.approx(math.log(4), rel=1e-6)
    # Orthonormal matched pairs at scale s: -log(e^s / (e^s + 3)).
    s = 5.0
    assert float(losses.clip_loss(eye, eye, s)) == pytest.approx(-math.log(math.exp(s) / (math.exp(s) + 3)), rel=1e-6)


def test_caption_loss_matches_numpy_and_ignores_pad(rng):
    logits = rng.normal(size=(3, 6, 50)).astype(np.float32) * 3
    labels = rng.integers(1, 50, size=(3, 6))
    labels[0, 4:] = 0
    labels[2, 1:] = 0
    labels[1, 2] = 0  # a '!' (id 0) mid-caption is skipped as well
    got = float(losses.caption_loss(logits, labels))
    assert got == pytest.approx(_np_caption_loss(logits, labels), rel=1e-5)
    # Changing logits at ignored positions leaves the loss unchanged.
    logits2 = logits.copy()
    logits2[2, 1:] += rng.normal(size=logits2[2, 1:].shape).astype(np.float32) * 10
    assert float(losses.caption_loss(logits2, labels)) == pytest.approx(got, rel=1e-6)


def test_caption_loss_uniform_logits_is_log_vocab():
    labels = np.array([[5, 9, 0, 0], [3, 0, 0, 0]])
    assert float(losses.caption_loss(np.zeros((2, 4, 49408), np.float32), labels)) == pytest.approx(
        math.log(49408), rel=1e-6
    )


def test_caption_loss_all_pad_is_zero_not_nan():
    assert float(losses.caption_loss(np.ones((1, 3, 7), np.float32), np.zeros((1, 3), np.int32))) == 0.0


def test_caption_loss_in_bf16_is_computed_in_fp32(rng):
    logits = rng.normal(size=(2, 5, 40)).astype(np.float32)
    labels = rng.integers(1, 40, size=(2, 5))
    got = losses.caption_loss(jnp.asarray(logits, jnp.bfloat16), labels)
    assert got.dtype == jnp.float32
    rounded = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32))
    assert float(got) == pytest.approx(_np_caption_loss(rounded, labels), rel=1e-5)


def test_mammut_loss_weights_one_and_two(rng):
    img = _normalised(rng.normal(size=(4, 8))).astype(np.float32)
    txt = _normalised(rng.normal(size=(4, 8))).astype(np.float32)
    logits = rng.normal(size=(4, 5, 30)).astype(np.float32)
    labels = rng.integers(0, 30, size=(4, 5))
    out = dict(image_features=img, text_features=txt, logit_scale=jnp.float32(10.0), logits=logits, labels=labels)
    total, parts = losses.mammut_loss(out)
    c, cap = _np_clip_loss(img, txt, 10.0), _np_caption_loss(logits, labels)
    assert float(parts["clip_loss"]) == pytest.approx(c, rel=1e-5)
    assert float(parts["caption_loss"]) == pytest.approx(cap, rel=1e-5)
    assert float(total) == pytest.approx(1.0 * c + 2.0 * cap, rel=1e-5)
    # Captioning-only runs ("cap") drop the contrastive term entirely.
    cap_total, cap_parts = losses.mammut_loss(out, clip_weight=0.0)
    assert set(cap_parts) == {"caption_loss"}
    assert float(cap_total) == pytest.approx(2.0 * cap, rel=1e-5)
    # model_loss takes the family explicitly.
    assert float(losses.model_loss(out, "mammut")[0]) == pytest.approx(float(total), rel=1e-7)
    clip_out = dict(image_features=img, text_features=txt, logit_scale=10.0)
    clip_total, clip_parts = losses.model_loss(clip_out, "clip", clip_weight=1.0, caption_weight=2.0)
    assert float(clip_total) == pytest.approx(c, rel=1e-5) and set(clip_parts) == {"clip_loss"}
    # A MaMMUT output with family "clip" is its contrastive loss only: the keys do not decide.
    assert float(losses.model_loss(out, "clip")[0]) == pytest.approx(c, rel=1e-5)
    with pytest.raises(ValueError, match="family"):
        losses.model_loss(out, "coca")


def test_losses_are_differentiable_and_jittable(rng):
    img = jnp.asarray(_normalised(rng.normal(size=(4, 8))), jnp.float32)
    txt = jnp.asarray(_normalised(rng.normal(size=(4, 8))), jnp.float32)
    g = jax.jit(jax.grad(lambda s: losses.clip_loss(img, txt, s)))(jnp.float32(2.0))
    # d/ds of the loss at the diagonal-dominant optimum direction is finite and non-zero.
    assert np.isfinite(float(g)) and float(g) != 0.0


# --- the sharded contrastive loss on 8 fake CPU devices -------------------------------------------------------------


@pytest.mark.parametrize("mesh_shape", [dict(data=8), dict(data=2, fsdp=4), dict(data=2, fsdp=2, tensor=2)])
def test_clip_loss_sharded_equals_plain_loss_and_gradients(rng, mesh_shape):
    from jax.sharding import NamedSharding, PartitionSpec

    from vlscale.runtime.sharding import make_mesh

    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    mesh = make_mesh(**mesh_shape, devices=jax.devices()[:8])
    # Features that are not normalised and a large scale make the log-sum-exps far from uniform.
    img = jnp.asarray(rng.normal(size=(32, 12)), jnp.float32)
    txt = jnp.asarray(rng.normal(size=(32, 12)), jnp.float32)
    scale = jnp.float32(7.5)

    def grads(loss_fn):
        return jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2)))(img, txt, scale)

    want, want_g = grads(losses.clip_loss)
    got, got_g = grads(lambda i, t, s: losses.clip_loss_sharded(i, t, s, mesh))
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    assert float(want) == pytest.approx(_np_clip_loss(img, txt, 7.5), rel=1e-5)
    for g, w in zip(got_g, want_g):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
    # The compiled (per-device) step holds [b, B] blocks, never the [B, B] matrix.
    hlo = jax.jit(jax.grad(lambda i, t, s: losses.clip_loss_sharded(i, t, s, mesh))).lower(img, txt, scale)
    hlo = hlo.compile().as_text()
    assert "f32[32,32]" not in hlo and f"f32[{32 // (8 // mesh_shape.get('tensor', 1))},32]" in hlo
    # Batch-sharded inputs (as the trainer holds them) give the same value; the model_loss route uses it.
    batch = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))
    out = dict(image_features=jax.device_put(img, batch), text_features=jax.device_put(txt, batch),
               logit_scale=scale)
    got_sharded = jax.jit(lambda o: losses.model_loss(o, "clip", mesh=mesh)[0])(out)
    assert float(got_sharded) == pytest.approx(float(want), rel=1e-6)


def test_clip_loss_sharded_rejects_an_indivisible_batch(rng):
    from vlscale.runtime.sharding import make_mesh

    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    mesh = make_mesh(data=8, devices=jax.devices()[:8])
    x = jnp.ones((12, 4), jnp.float32)
    with pytest.raises(ValueError, match="divisible"):
        losses.clip_loss_sharded(x, x, 1.0, mesh)


# --- the chunked caption head + loss ---------------------------------------------------------------------------------


def test_caption_loss_from_hidden_equals_the_logits_path(rng):
    hidden = jnp.asarray(rng.normal(size=(3, 13, 16)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(16, 300)) * 0.5, jnp.float32)
    labels = rng.integers(1, 300, size=(3, 13))
    labels[0, 5:] = 0
    labels[1, 9:] = 0
    labels[2, 2:] = 0  # positions 9.. are padding everywhere: the last chunks are skipped
    labels[1, 3] = 0

    def plain(h, w):
        return losses.caption_loss(h @ w, labels)

    def chunked(h, w):
        return losses.caption_loss_from_hidden(h, w, labels, chunk=4)

    want, want_g = jax.jit(jax.value_and_grad(plain, argnums=(0, 1)))(hidden, head)
    got, got_g = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1)))(hidden, head)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    assert float(want) == pytest.approx(_np_caption_loss(np.asarray(hidden @ head), labels), rel=1e-5)
    for g, w in zip(got_g, want_g):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
    total, count = losses.caption_nll_from_hidden(hidden, head, labels, chunk=5)
    assert float(count) == (labels != 0).sum() and float(total) == pytest.approx(float(want) * float(count), rel=1e-6)
    assert float(losses.caption_loss_from_hidden(hidden, head, np.zeros_like(labels))) == 0.0


def test_mammut_loss_from_hidden_states_equals_the_plain_forward():
    """tiny-mammut, float32: the caption_head=False forward + chunked loss gives the same loss and parameter
    gradients as the default forward's logits path, with no [B, L-1, V] buffer in the compiled step."""
    from vlscale.models import registry

    model = registry.build_model("tiny-mammut")
    params = registry.init_params(model, 0)
    # open_clip's LM head starts at zero; make it non-trivial so the gradients test something.
    head = params["text"]["text_projection"]
    params["text"]["text_projection"] = jax.random.normal(jax.random.key(1), head.shape, head.dtype) * 0.05
    r = np.random.default_rng(1)
    images = jnp.asarray(r.normal(size=(4, 32, 32, 3)), jnp.float32)
    tokens = np.zeros((4, 16), np.int32)
    for i, n in enumerate((5, 16, 9, 3)):
        tokens[i, :n] = r.integers(1, 49407, size=n)
        tokens[i, n - 1] = 49407
    tokens = jnp.asarray(tokens)

    def loss(p, caption_head):
        out = model.apply({"params": p}, images, tokens, caption_head=caption_head)
        return losses.model_loss(out, "mammut", caption_chunk=4)[0]

    with jax.default_matmul_precision("highest"):
        want, want_g = jax.jit(jax.value_and_grad(lambda p: loss(p, True)))(params)
        fused = jax.jit(jax.value_and_grad(lambda p: loss(p, False))).lower(params).compile()
        got, got_g = fused(params)
        hlo = fused.as_text()
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    # Some gradients are zero in exact arithmetic (attention key biases): compare on the gradients' global scale.
    scale = max(float(np.abs(w).max()) for w in jax.tree.leaves(want_g))
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got_g), jax.tree.leaves(want_g)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))
    assert "f32[4,15,49408]" not in hlo and "f32[4,4,49408]" in hlo


def _caption_case(rng, batch=16, length=13, width=16, vocab=304):
    hidden = jnp.asarray(rng.normal(size=(batch, length, width)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(width, vocab)) * 0.5, jnp.float32)
    lengths = rng.integers(0, length + 1, size=batch)
    labels = rng.integers(1, vocab, size=(batch, length))
    labels[np.arange(length)[None, :] >= lengths[:, None]] = 0  # one row may have no target at all
    labels[0, :] = rng.integers(1, vocab, size=length)  # and one reaches the last position
    return hidden, head, labels


@pytest.mark.parametrize("mesh_shape", [dict(fsdp=8), dict(data=8), dict(data=2, fsdp=4),
                                        dict(data=2, fsdp=2, tensor=2)])
def test_caption_nll_on_a_mesh_equals_the_logits_path(rng, mesh_shape):
    """Inside shard_map over the batch axes (head gathered from its FSDP / tensor split, gradient reduced back to
    it), with batch-sharded hidden states as the trainer holds them: the same loss and gradients as the plain
    ``caption_loss`` on ``hidden @ lm_head``."""
    from jax.sharding import NamedSharding, PartitionSpec

    from vlscale.runtime.sharding import make_mesh

    mesh = make_mesh(**{"data": 1, **mesh_shape}, devices=jax.devices()[:8])
    hidden, head, labels = _caption_case(rng)
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    head_split = NamedSharding(mesh, PartitionSpec("fsdp", "tensor"))
    hidden_s, labels_s = jax.device_put(hidden, rows), jax.device_put(labels, rows)
    head_s = jax.device_put(head, head_split)

    def plain(h, w):
        return losses.caption_loss(h @ w, labels)

    def on_mesh(h, w, y):
        return losses.caption_loss_from_hidden(h, w, y, chunk=4, mesh=mesh)

    with jax.default_matmul_precision("highest"):
        want, want_g = jax.jit(jax.value_and_grad(plain, argnums=(0, 1)))(hidden, head)
        got, got_g = jax.jit(jax.value_and_grad(on_mesh, argnums=(0, 1)),
                             out_shardings=(None, (rows, head_split)))(hidden_s, head_s, labels_s)
    assert float(want) == pytest.approx(_np_caption_loss(np.asarray(hidden @ head), labels), rel=1e-5)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    for g, w in zip(got_g, want_g):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    # Without differentiation (evaluation) the same value, through the forward-only path.
    assert float(jax.jit(on_mesh)(hidden_s, head_s, labels_s)) == pytest.approx(float(want), rel=1e-6)


def test_caption_nll_gradient_scales_with_the_upstream_cotangent(rng):
    """The custom VJP multiplies its stored gradients by the cotangent: a weighted loss gives weighted gradients,
    and a second derivative-free use (a sum of two calls) adds them."""
    hidden, head, labels = _caption_case(rng, batch=3, length=9, width=8, vocab=40)

    def twice(h, w):
        total, count = losses.caption_nll_from_hidden(h, w, labels, chunk=4)
        return 2.0 * total / count - 0.5 * losses.caption_loss_from_hidden(h, w, labels, chunk=3)

    want = jax.grad(lambda h, w: 1.5 * losses.caption_loss(h @ w, labels), argnums=(0, 1))(hidden, head)
    got = jax.grad(twice, argnums=(0, 1))(hidden, head)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_caption_nll_in_bf16_keeps_float32_gradient_of_the_head(rng):
    """bf16 hidden states: the loss is float32 and close to the float32 path; the head's gradient comes back in
    the head's own dtype (float32), the hidden states' in theirs."""
    hidden, head, labels = _caption_case(rng, batch=4, length=9, width=16, vocab=64)
    want = losses.caption_loss(hidden @ head, labels)
    value, (dh, dw) = jax.value_and_grad(
        lambda h, w: losses.caption_loss_from_hidden(h, w, labels, chunk=4), argnums=(0, 1))(
        hidden.astype(jnp.bfloat16), head)
    assert value.dtype == jnp.float32 and dh.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    assert float(value) == pytest.approx(float(want), rel=2e-2)
