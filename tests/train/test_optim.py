"""The optimizer against open_clip's definitions: the weight-decay rule, the LR schedules, torch's clipping."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlscale.configs import train as train_config
from vlscale.models import convert, registry
from vlscale.train import optim


def _open_clip_decays(torch_name: str, torch_ndim: int) -> bool:
    # open_clip main.py: exclude = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
    excluded = torch_ndim < 2 or "bn" in torch_name or "ln" in torch_name or "bias" in torch_name \
        or "logit_scale" in torch_name
    return not excluded


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-M-16-alt", "mammut_ViT-B-32"])
def test_decay_mask_is_open_clips_rule(name):
    model = registry.build_model(name)
    shapes = registry.param_shapes(model)
    mask = optim.decay_mask(shapes)
    torch_shapes = convert.expected_state_dict_shapes(name)
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    checked = 0
    for path, decays in flat:
        keys = tuple(p.key for p in path)
        torch_name = convert.flax_leaf_to_torch(keys)[0]
        want = _open_clip_decays(torch_name, len(torch_shapes[torch_name]))
        assert decays == want, (keys, torch_name)
        checked += 1
    assert checked == len(flat) > 50
    # Spot checks of the reference's list (reference-models.md §8).
    by_name = {"/".join(p.key for p in path): d for path, d in flat}
    assert by_name["visual/positional_embedding"] and by_name["visual/proj"]
    assert not by_name["visual/class_embedding"] and not by_name["logit_scale"]


def _schedule(kind, step, peak=1e-3, warmup=10, total=100, cooldown=20):
    """open_clip scheduler.py, written from its definitions (step = updates done)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if kind == "cosine":
        e, es = step - warmup, total - warmup
        return 0.5 * (1 + math.cos(math.pi * e / es)) * peak
    if kind == "const":
        return peak
    start = total - cooldown
    if step < start:
        return peak
    return (1 - (step - start) / cooldown) * peak


@pytest.mark.parametrize("kind", ["cosine", "const", "const-cooldown"])
def test_schedules_match_open_clip(kind):
    c = train_config.get_config()
    c.lr, c.warmup, c.schedule, c.cooldown_steps = 1e-3, 10, kind, 20
    sched = {k: jnp.asarray(v) for k, v in optim.schedule_params(c, 100).items()}
    ours = np.asarray(jax.vmap(lambda s: optim.learning_rate(s, sched))(jnp.arange(100)))
    want = np.array([_schedule(kind, s) for s in range(100)])
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-9)
    if kind == "cosine":
        assert ours[-1] < 1e-6


def test_cooldown_fraction():
    c = train_config.get_config()
    c.schedule, c.cooldown_steps, c.cooldown_fraction = "const-cooldown", 0, 0.25
    assert optim.cooldown_steps(c, 200) == 50


def test_clipping_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    grads = {"a": rng.normal(size=(4, 5)).astype(np.float32) * 3, "b": rng.normal(size=(7,)).astype(np.float32)}
    clipped, norm = optim.clip_by_global_norm(jax.tree.map(jnp.asarray, grads), 1.0)
    ps = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads.values()]
    for p, g in zip(ps, grads.values()):
        p.grad = torch.from_numpy(g.copy())
    total = torch.nn.utils.clip_grad_norm_(ps, 1.0)
    assert float(norm) == pytest.approx(float(total), rel=1e-6)
    for p, k in zip(ps, grads):
        np.testing.assert_allclose(np.asarray(clipped[k]), p.grad.numpy(), rtol=1e-6)


def test_adamw_update_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    b = rng.normal(size=(4,)).astype(np.float32)
    params = {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}
    mask = {"kernel": True, "bias": False}
    c = train_config.get_config()
    adam = optim.make_adam(c)
    state = adam.init(params)
    tw, tb = torch.nn.Parameter(torch.from_numpy(w.copy())), torch.nn.Parameter(torch.from_numpy(b.copy()))
    opt = torch.optim.AdamW([{"params": [tw], "weight_decay": 0.2}, {"params": [tb], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.95), eps=1e-6)
    for i in range(3):
        g = {"kernel": rng.normal(size=w.shape).astype(np.float32), "bias": rng.normal(size=b.shape).astype(np.float32)}
        upd, state = adam.update(jax.tree.map(jnp.asarray, g), state, params)
        params = optim.adamw_update(params, upd, mask, jnp.float32(1e-2), jnp.float32(0.2))
        tw.grad, tb.grad = torch.from_numpy(g["kernel"]), torch.from_numpy(g["bias"])
        opt.step()
    np.testing.assert_allclose(np.asarray(params["kernel"]), tw.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(params["bias"]), tb.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "const-cooldown"])
@pytest.mark.parametrize("new_batch", [16, 4, 12])
def test_a_resume_with_another_global_batch_continues_the_same_curve_over_samples(kind, new_batch):
    """Started at batch 8 (100 steps = 800 samples), resumed at step 40 (320 samples) with another batch: the
    update after j more steps has the LR the original run had at sample 320 + j * new_batch."""
    c = train_config.get_config()
    c.lr, c.warmup, c.schedule, c.cooldown_steps, c.global_batch_size = 1e-3, 10, kind, 20, 8
    original = {k: jnp.asarray(v) for k, v in optim.schedule_params(c, 100).items()}
    c.global_batch_size = new_batch
    resumed = {k: jnp.asarray(v) for k, v in optim.schedule_params(c, 100, resume_step=40, resume_samples=320,
                                                                      schedule_batch_size=8).items()}
    steps = np.arange(40, 40 + (800 - 320) // new_batch)
    ours = np.asarray(jax.vmap(lambda s: optim.learning_rate(s, resumed))(jnp.asarray(steps)))
    positions = (320 + (steps - 40) * new_batch) / 8  # on the original run's step axis (fractional)
    want = np.array([_schedule(kind, p) for p in positions])
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-9)
    if new_batch == 16:  # whole positions: exactly the original run's LRs at steps 40, 42, 44, ...
        np.testing.assert_array_equal(ours, np.asarray(jax.vmap(lambda s: optim.learning_rate(s, original))(
            jnp.asarray(40 + 2 * (steps - 40)))))


def test_without_a_batch_change_the_position_is_the_step_exactly():
    c = train_config.get_config()
    c.lr, c.warmup, c.schedule, c.global_batch_size = 1e-3, 10, "cosine", 8
    plain = {k: jnp.asarray(v) for k, v in optim.schedule_params(c, 100).items()}
    resumed = {k: jnp.asarray(v) for k, v in optim.schedule_params(c, 100, resume_step=37).items()}
    s = jnp.arange(37, 100)
    np.testing.assert_array_equal(jax.vmap(lambda t: optim.learning_rate(t, plain))(s),
                                  jax.vmap(lambda t: optim.learning_rate(t, resumed))(s))
