"""Build models by name, initialise their parameters, and describe their shapes and logical axes.

Parameters are a plain pytree kept apart from the module: ``init_params`` returns them unboxed, and
``param_logical_axes`` gives the matching tree of logical axis names (``PartitionSpec`` of names such as
``('embed', 'heads', 'kv')``) for ``vlscale.train.sharding``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlscale.models.config import ModelConfig, RuntimeOptions, get_config


def build_model(name_or_config: str | ModelConfig, **runtime_options) -> nn.Module:
    """A Flax module for a named (or given) configuration.

    runtime_options: ``dtype`` ("float32" | "bfloat16"), ``remat`` ("none" | "block" | "full"),
    ``scan_layers`` (bool); see ``RuntimeOptions``.
    """
    cfg = get_config(name_or_config)
    runtime = RuntimeOptions(**runtime_options)
    if cfg.family == "clip":
        from vlscale.models.clip import CLIP

        return CLIP(cfg, runtime)
    if cfg.family == "mammut":
        from vlscale.models.mammut import MaMMUT

        return MaMMUT(cfg, runtime)
    raise ValueError(f"unknown model family {cfg.family!r}")


def dummy_inputs(cfg: ModelConfig, batch: int = 1) -> tuple[jax.Array, jax.Array]:
    """Zero images [B, S, S, 3] and tokens [B, ctx] with the shapes ``model.init`` needs."""
    images = jnp.zeros((batch, cfg.image_size, cfg.image_size, 3), jnp.float32)
    tokens = jnp.zeros((batch, cfg.context_length), jnp.int32)
    return images, tokens


def _boxed_init(model: nn.Module, rng: jax.Array) -> Any:
    return model.init(rng, *dummy_inputs(model.config))["params"]


def init_params(model: nn.Module, rng: jax.Array | int = 0) -> dict:
    """Freshly initialised parameters (open_clip's init, reference §4) as a plain, unboxed pytree."""
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    return nn.meta.unbox(jax.jit(_boxed_init, static_argnums=0)(model, rng))


def param_shapes(model: nn.Module) -> dict:
    """``jax.ShapeDtypeStruct`` per parameter, computed without allocating (cheap even for ViT-H)."""
    return nn.meta.unbox(jax.eval_shape(functools.partial(_boxed_init, model), jax.random.key(0)))


def param_logical_axes(model: nn.Module) -> dict:
    """The logical axis names of every parameter, as a pytree of ``PartitionSpec`` of names."""
    boxed = jax.eval_shape(functools.partial(_boxed_init, model), jax.random.key(0))
    return nn.get_partition_spec(boxed)


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)))


def count_tensors(params: Any) -> int:
    return len(jax.tree.leaves(params))
