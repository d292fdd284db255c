"""Build models by name, initialise their parameters, and describe their shapes and logical axes.

Parameters are a plain pytree kept apart from the module: ``init_params`` returns them unboxed, and
``param_logical_axes`` gives the matching tree of logical axis names (``PartitionSpec`` of names such as
``('embed', 'heads', 'kv')``) for ``vlscale.runtime.sharding``.
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

    runtime_options: ``dtype`` and ``param_dtype`` ("float32" | "bfloat16"), ``remat`` ("none" | "block" |
    "full"), ``scan_layers`` (bool), ``attention`` ("xla" | "auto" | "dot_product" | "cudnn" | "pallas"); see
    ``RuntimeOptions``.
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


def _unboxed_init(model: nn.Module, rng: jax.Array) -> Any:
    return nn.meta.unbox(_boxed_init(model, rng))


# Integer seeds become keys of JAX's default threefry, which is partitionable (jax_threefry_partitionable, the
# default since JAX 0.5): a parameter initialised under out_shardings is generated shard by shard and has the same
# values on any mesh. "rbg" compiles faster but XLA generates each rbg tensor whole before slicing it, which
# needed 470 MB of temporaries per device for ViT-B-32 on 8 devices (threefry: 100 MB; one shard is 76 MB).
INIT_PRNG_IMPL = "threefry2x32"
# Below this size a CPU init is compiled at LLVM -O0 (see init_compiler_options).
_FAST_COMPILE_MAX_PARAMS = 100_000_000


def init_compiler_options(model: nn.Module) -> dict | None:
    """XLA options for jitting a parameter init of ``model`` (pass to ``jax.jit(..., compiler_options=...)``).

    An init is hundreds of small random-number fusions that run once. On CPU, compiling them without LLVM
    optimisation is much faster, and for models below 100M parameters the slower code costs less than the
    compile saves (bench numbers in the commit history); elsewhere the defaults stay.
    """
    if jax.default_backend() != "cpu" or _param_count(model) >= _FAST_COMPILE_MAX_PARAMS:
        return None
    return {"xla_backend_optimization_level": 0}


@functools.lru_cache(maxsize=64)
def _param_count(model: nn.Module) -> int:
    return count_params(param_shapes(model))


def _as_key(rng: jax.Array | int) -> jax.Array:
    return jax.random.key(rng, impl=INIT_PRNG_IMPL) if isinstance(rng, int) else rng


@functools.lru_cache(maxsize=64)
def _jitted_init(model: nn.Module, out_shardings: Any, options: tuple) -> Any:
    # One jitted function per (model, shardings): a study re-initialising the same model reuses the executable.
    return jax.jit(functools.partial(_unboxed_init, model),
                   out_shardings=None if out_shardings is None else out_shardings.tree,
                   compiler_options=dict(options) or None)


def init_params(model: nn.Module, rng: jax.Array | int = 0, *, out_shardings: Any = None) -> dict:
    """Freshly initialised parameters (open_clip's init, reference §4) as a plain, unboxed pytree.

    ``rng``: an int seed (a threefry key, ``INIT_PRNG_IMPL``) or any JAX key. ``out_shardings``: a tree of
    shardings matching ``param_shapes(model)`` (or one sharding for all); each parameter is then created
    directly in its shards, so no full replica lands on one device first.
    """
    options = tuple(sorted((init_compiler_options(model) or {}).items()))
    return _jitted_init(model, _hashable(out_shardings), options)(_as_key(rng))


def init_params_sharded(model: nn.Module, rng: jax.Array | int, shardings: Any) -> dict:
    """``init_params`` straight into ``shardings`` (e.g. ``vlscale.runtime.sharding.logical_to_sharding`` of
    ``param_logical_axes(model)``): the trainer's init on a mesh. Same values as the unsharded init."""
    return init_params(model, rng, out_shardings=shardings)


class _Frozen:
    """A hashable wrapper around a shardings pytree (for the jit cache); jit sees the tree itself."""

    def __init__(self, tree):
        self.tree = tree
        leaves, treedef = jax.tree.flatten(tree)
        self._key = (treedef, tuple(leaves))

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Frozen) and self._key == other._key


def _hashable(tree: Any) -> Any:
    return None if tree is None else _Frozen(tree)


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
