"""Transformer building blocks shared by the ViT, the CLIP text tower and the MaMMUT decoder: logical axis names,
initialisers, LayerNorm, LayerScale and the MLP (``attention`` holds the attention, ``transformer`` the block and
the stack).

Parameter names and layouts mirror open_clip's state-dict keys (reference §3) so conversion is a fixed set of
transposes and reshapes: ``ln_1``, ``attn/{query,key,value,out}``, ``ls_1/gamma``, ``ln_2``, ``mlp/{c_fc,c_proj}``
and, for cross-attention blocks, ``ln_1_kv``. Numerics follow reference §10: LayerNorm eps 1e-5 with two-pass
variance in float32, exact (erf) GELU, attention scaled by 1/sqrt(head_dim).

Every parameter carries logical axis names (``nn.with_logical_partitioning``) and the residual stream and
attention activations carry logical constraints, so a trainer shards them with a rules table
(``vlscale.runtime.sharding``) without touching this code. Without rules the constraints are no-ops.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# Logical axis names (MaxText-style); vlscale.runtime.sharding maps them to mesh axes.
BATCH = "batch"
LENGTH = "length"  # sequence position (text tokens or image patches + class token)
EMBED = "embed"  # model width
MLP = "mlp"  # MLP hidden width
HEADS = "heads"
KV = "kv"  # head dimension
VOCAB = "vocab"
LAYERS = "layers"  # leading axis of scan-stacked parameters
NORM = "norm"  # LayerNorm scale/bias and layer-scale gamma (small: replicated)
PROJ = "proj"  # output width of the contrastive projections (embed_dim)

# torch.nn.LayerNorm default eps, used by open_clip (reference §1.1, §10.1).
LN_EPS = 1e-5
# Text-tower embedding init, the same in CLIP's TextTransformer and MaMMUT's MultimodalTransformer
# (reference §4): tokens N(0, 0.02), positions N(0, 0.01).
TOKEN_EMBED_STD = 0.02
POSITION_EMBED_STD = 0.01

InitScheme = Literal["torch_default", "clip_text"]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The residual stream (embeddings plus every block's output) and the LayerNorms stay float32 whatever the compute
# dtype, as under open_clip's amp_bfloat16: only matmuls and attention run in the compute dtype, so the small
# per-block increments are added to a float32 sum.
RESIDUAL_DTYPE = jnp.float32


def compute_dtype(name_or_dtype: Any) -> Any:
    """Maps "float32"/"bfloat16" (or a dtype) to a jnp dtype."""
    return DTYPES.get(name_or_dtype, name_or_dtype)


def uniform_init(bound: float) -> Callable:
    """U(-bound, bound), the shape of torch's default Linear/Conv (kaiming_uniform a=sqrt(5)) and xavier inits."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def normal_init(std: float) -> Callable:
    return nn.initializers.normal(stddev=std)


def constant_init(value: float) -> Callable:
    def init(key, shape, dtype=jnp.float32):
        return jnp.full(shape, value, dtype)

    return init


def boxed(init: Callable, axes: tuple) -> Callable:
    """An initializer whose parameter carries logical axis names."""
    return nn.with_logical_partitioning(init, axes)


def constrain(x: jax.Array, axes: tuple) -> jax.Array:
    """Logical sharding constraint on an activation (no-op unless logical rules are active)."""
    return nn.with_logical_constraint(x, axes)


def embed_tokens(embed: nn.Embed, tokens: jax.Array, dtype) -> jax.Array:
    """``embed(tokens)`` with the table first gathered along its embedding axis (still split over ``vocab``).

    Under FSDP the table's ``embed`` axis is sharded while the activations are batch-sharded; a lookup straight
    into the sharded table makes the backward scatter-add need cotangents sharded like the table, which XLA can
    only reach by replicating them ("involuntary full rematerialization"). Gathering the table first is what FSDP
    does for every weight: the lookup and its scatter-add stay local and the gradient is reduce-scattered.
    Same values as ``nn.Embed.__call__``.
    """
    table = constrain(embed.embedding, (VOCAB, None))
    return jnp.take(table, tokens, axis=0).astype(dtype)


class LayerNorm(nn.Module):
    """open_clip's LayerNorm: eps 1e-5, two-pass variance, computed in float32 and cast back to the input dtype.

    Parameters ``scale``/``bias`` (torch ``weight``/``bias``) are stored in ``param_dtype`` (float32 by default)
    and applied in float32.
    """

    epsilon: float = LN_EPS
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        scale = self.param("scale", boxed(nn.initializers.ones, (NORM,)), (width,), self.param_dtype)
        bias = self.param("bias", boxed(nn.initializers.zeros, (NORM,)), (width,), self.param_dtype)
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        centred = xf - mean
        var = jnp.mean(centred * centred, axis=-1, keepdims=True)
        y = centred * lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(x.dtype)


def layer_norm(name: str | None = None, param_dtype: Any = jnp.float32) -> LayerNorm:
    """The LayerNorm every tower uses (pass no name inside ``setup``, where the attribute names it)."""
    return LayerNorm(name=name, param_dtype=param_dtype)


class LayerScale(nn.Module):
    """open_clip LayerScale: ``x * gamma`` with gamma initialised to ``init_value`` (ViT-M-16-alt: 1e-4)."""

    init_value: float
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param("gamma", boxed(constant_init(self.init_value), (NORM,)), (x.shape[-1],),
                           self.param_dtype)
        return x * gamma.astype(x.dtype)


# torch F.normalize default eps (reference §1.3).
NORMALIZE_EPS = 1e-12


def l2_normalize(x: jax.Array, eps: float = NORMALIZE_EPS) -> jax.Array:
    """``F.normalize(x, dim=-1)``: x / max(||x||, eps), returned in float32 (features feed the fp32 losses)."""
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)



class Mlp(nn.Module):
    """``c_fc`` -> exact GELU -> ``c_proj`` (open_clip uses nn.GELU(), erf-based)."""

    width: int
    hidden: int
    init_scheme: InitScheme = "torch_default"
    stack_depth: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        w, h = self.width, self.hidden
        fc_bias, proj_bias = uniform_init(1 / math.sqrt(w)), uniform_init(1 / math.sqrt(h))
        if self.init_scheme == "clip_text":
            fc_kernel = normal_init((2 * w) ** -0.5)
            proj_kernel = normal_init(w**-0.5 * (2 * self.stack_depth) ** -0.5)
        else:
            fc_kernel, proj_kernel = fc_bias, proj_bias
        y = nn.Dense(h, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=boxed(fc_kernel, (EMBED, MLP)),
                     bias_init=boxed(fc_bias, (MLP,)), name="c_fc")(x)
        y = constrain(y, (BATCH, LENGTH, MLP))
        y = jax.nn.gelu(y, approximate=False)
        return nn.Dense(w, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=boxed(proj_kernel, (MLP, EMBED)),
                        bias_init=boxed(proj_bias, (EMBED,)), name="c_proj")(y)
