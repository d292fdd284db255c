"""The paper's optimizer: AdamW with open_clip's weight-decay exclusions, torch-style global-norm clipping, and
learning-rate schedules whose lengths are data (one compiled step serves every run of a model).

Schedules follow open_clip ``scheduler.py`` (reference-models.md §8): warm-up ``lr·(step+1)/warmup``; ``cosine``
``0.5·(1+cos(π·e/es))·lr`` with e = step − warmup, es = total − warmup; ``const``; ``const-cooldown`` constant,
then ``(1 − e/es)·lr`` over the last ``cooldown`` steps (power 1, end 0). ``step`` is the number of updates done
before this one (0 for the first update).

The schedule is a function of samples seen: its lengths (warm-up, total, cooldown) count steps of the run's
*schedule batch* (the global batch it started with). A run resumed with another global batch size
(``allow_config_change``) continues the same curve: the update after ``step`` sits at position
``(samples seen before the resume + (step − resume step) × new batch) / schedule batch`` on it. Without a change
the position is the step itself, exactly.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlscale.errors import UserError

SCHEDULE_CODES = {"cosine": 0, "const": 1, "const-cooldown": 2}
# open_clip main.py: no decay for ndim < 2, "bn"/"ln"/"bias"/"logit_scale" in the name. In this codebase's names
# that is: every bias and LayerNorm scale, layer-scale gammas, the class token and the temperature.
NO_DECAY_LEAVES = frozenset({"bias", "scale", "gamma", "class_embedding", "logit_scale"})
# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing.
CLIP_NORM_EPS = 1e-6


def schedule_params(config, total_steps: int, *, resume_step: int = 0, resume_samples: int | None = None,
                    schedule_batch_size: int | None = None) -> dict[str, np.ndarray]:
    """The schedule as arrays (passed to the jitted step, so changing a length never recompiles).

    ``total_steps``: the run's length in steps of ``schedule_batch_size`` (default: the config's global batch).
    ``resume_step`` / ``resume_samples``: where a run resumed with another global batch size continued (see the
    module docstring); with the schedule batch they change nothing.
    """
    if config.schedule not in SCHEDULE_CODES:
        raise UserError(f"schedule {config.schedule!r} is not one of {', '.join(SCHEDULE_CODES)}")
    batch = int(config.global_batch_size)
    unit = int(schedule_batch_size or batch)
    if resume_samples is None:
        resume_samples = resume_step * batch
    if unit == batch and resume_samples == resume_step * unit:
        base, ratio = float(resume_step), 1.0  # position == step, exactly
    else:
        base, ratio = resume_samples / unit, batch / unit
    cooldown = cooldown_steps(config, total_steps)
    return {
        "resume_step": np.float32(resume_step),
        "resume_position": np.float32(base),
        "batch_ratio": np.float32(ratio),
        "kind": np.int32(SCHEDULE_CODES[config.schedule]),
        "peak_lr": np.float32(config.lr),
        "warmup": np.float32(config.warmup),
        "total": np.float32(total_steps),
        "cooldown": np.float32(cooldown),
        "weight_decay": np.float32(config.weight_decay),
    }


def cooldown_steps(config, total_steps: int) -> int:
    if config.schedule != "const-cooldown":
        return 0
    if int(config.cooldown_steps) > 0:
        return int(config.cooldown_steps)
    return int(round(float(config.cooldown_fraction) * total_steps))


def learning_rate(step: jax.Array, sched: dict[str, jax.Array]) -> jax.Array:
    """LR of the update that follows ``step`` completed updates (at its position on the sample-indexed curve)."""
    step = jnp.asarray(step, jnp.float32)
    if "resume_step" in sched:
        step = sched["resume_position"] + (step - sched["resume_step"]) * sched["batch_ratio"]
    peak, warmup, total, cooldown = sched["peak_lr"], sched["warmup"], sched["total"], sched["cooldown"]
    warm = peak * (step + 1.0) / jnp.maximum(warmup, 1.0)
    e, es = step - warmup, jnp.maximum(total - warmup, 1.0)
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * e / es)) * peak
    start = total - cooldown
    cool = jnp.where(step >= start, (1.0 - (step - start) / jnp.maximum(cooldown, 1.0)) * peak, peak)
    after = jnp.select([sched["kind"] == 0, sched["kind"] == 1], [cosine, peak], cool)
    return jnp.where(step < warmup, warm, after)


def decay_mask(params: Any) -> Any:
    """True where AdamW decays the weight (matrices, embeddings, projections), False for the exclusions."""

    def keep(path, _):
        names = [getattr(p, "key", getattr(p, "name", str(p))) for p in path]
        if names[-1] in NO_DECAY_LEAVES:
            return False
        return not any(str(n).startswith("ln") for n in names)

    return jax.tree_util.tree_map_with_path(keep, params)


def make_adam(config) -> optax.GradientTransformation:
    """Adam moments (open_clip's AdamW minus the step size and decay, which ``adamw_update`` applies)."""
    return optax.scale_by_adam(b1=float(config.beta1), b2=float(config.beta2), eps=float(config.eps))


def compute_params(params: Any, mask: Any, dtype: Any) -> Any:
    """The weights the forward reads, as open_clip's autocast casts them: the decayed leaves (matrices,
    embeddings, projections) in ``dtype``; norms, biases, layer-scale gammas, the class token and the temperature
    stay float32. Called inside the differentiated loss, so gradients, Adam moments and the updates they make
    stay with the float32 master copy: an update below ``dtype``'s resolution is kept, not rounded away."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float32:
        return params
    return jax.tree.map(lambda p, decay: p.astype(dtype) if decay else p, params, mask)


def adamw_update(params: Any, adam_updates: Any, mask: Any, lr: jax.Array, weight_decay: jax.Array) -> Any:
    """Decoupled AdamW as torch does it: p <- p - lr·(adam + wd·p) on decayed leaves, p - lr·adam elsewhere."""

    def one(p, u, decay):
        step = u + weight_decay * p if decay else u
        return (p - lr * step).astype(p.dtype)

    return jax.tree.map(one, params, adam_updates, mask)


def clip_by_global_norm(grads: Any, max_norm: float) -> tuple[Any, jax.Array]:
    """torch ``clip_grad_norm_``: scale by min(1, max_norm / (norm + 1e-6)); returns (grads, norm before)."""
    norm = optax.tree.norm(grads)
    if not max_norm:
        return grads, norm
    scale = jnp.minimum(1.0, max_norm / (norm + CLIP_NORM_EPS))
    return jax.tree.map(lambda g: (g * scale).astype(g.dtype), grads), norm
