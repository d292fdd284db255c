"""Transformer building blocks shared by the ViT, the CLIP text tower and the MaMMUT decoder.

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


class HeadsProjection(nn.Module):
    """Linear map width -> [heads, head_dim] (kernel [w, H, hd], bias [H, hd]): one of torch MHA's packed q|k|v."""

    heads: int
    head_dim: int
    kernel_init: Callable
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = x.shape[-1]
        kernel = self.param("kernel", boxed(self.kernel_init, (EMBED, HEADS, KV)), (w, self.heads, self.head_dim),
                            self.param_dtype)
        bias = self.param("bias", boxed(nn.initializers.zeros, (HEADS, KV)), (self.heads, self.head_dim),
                          self.param_dtype)
        y = jnp.einsum("...w,whd->...hd", x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class HeadsOutput(nn.Module):
    """Linear map [heads, head_dim] -> width (kernel [H, hd, w], bias [w]): torch MHA's ``out_proj``."""

    width: int
    kernel_init: Callable
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        heads, head_dim = x.shape[-2:]
        kernel = self.param("kernel", boxed(self.kernel_init, (HEADS, KV, EMBED)), (heads, head_dim, self.width),
                            self.param_dtype)
        bias = self.param("bias", boxed(nn.initializers.zeros, (EMBED,)), (self.width,), self.param_dtype)
        y = jnp.einsum("...hd,hdw->...w", x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


# torch F.normalize default eps (reference §1.3).
NORMALIZE_EPS = 1e-12


def l2_normalize(x: jax.Array, eps: float = NORMALIZE_EPS) -> jax.Array:
    """``F.normalize(x, dim=-1)``: x / max(||x||, eps), returned in float32 (features feed the fp32 losses)."""
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def causal_mask(length: int) -> jax.Array:
    """Boolean [1, 1, L, L] mask, True where a query may attend (key position <= query position).

    Equivalent to open_clip's additive mask (-inf above the diagonal, reference §1.2).
    """
    pos = jnp.arange(length)
    return (pos[None, :] <= pos[:, None])[None, None]


# RuntimeOptions.attention -> how dot_product_attention runs.
ATTENTION_IMPLEMENTATIONS = ("xla", "dot_product", "cudnn")


def dot_product_attention(q, k, v, mask=None, dtype=jnp.float32, implementation: str = "xla"):
    """Softmax(q k^T / sqrt(hd)) v over [B, L, H, hd] inputs; logits (accumulated) and softmax in float32.

    ``mask``: boolean, broadcastable to [B, H, Lq, Lk], True = attend.
    ``implementation``: "xla" is the einsum below (the parity reference); "dot_product" calls
    ``jax.nn.dot_product_attention`` and lets JAX pick the kernel; "cudnn" forces its cuDNN fused kernel (GPU,
    bf16/fp16 only). (cuDNN's fused attention, tried on an H100, rejected the backward pass for CLIP's lengths
    50/77/197/257; lengths that are multiples of 8, see ``MaMMUT`` text padding, are what it supports.)
    """
    if implementation != "xla":
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention {implementation!r}: use one of {ATTENTION_IMPLEMENTATIONS}")
        impl = "cudnn" if implementation == "cudnn" else None
        out = jax.nn.dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), mask=mask,
                                           implementation=impl)
        return out.astype(dtype)
    head_dim = q.shape[-1]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(head_dim)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class Attention(nn.Module):
    """Multi-head attention with torch ``nn.MultiheadAttention``'s parameters split per projection.

    Params: ``query``/``key``/``value`` (kernel [w, H, hd], bias [H, hd]) and ``out`` (kernel [H, hd, w], bias [w]).

    ``__call__(x, kv=None, mask=None, decode=False)``:
      * self-attention when ``kv`` is None, else cross-attention with keys/values from ``kv`` ([B, N, w]).
      * ``mask``: boolean, True = attend, broadcastable to [B, H, Lq, Lk] (see ``causal_mask``).
      * ``decode=True`` (self-attention) keeps a KV cache in the ``'cache'`` collection like linen's MHA: the
        first call (run it under ``init``/``apply(..., mutable=['cache'])`` with an input of the maximum
        length) only allocates ``cached_key``/``cached_value`` [B, Lmax, H, hd] and ``cache_index``; later calls
        write their L >= 1 new positions at ``cache_index``, attend causally to everything cached so far (the
        ``mask`` argument is ignored) and advance the index. A prompt can be prefilled in one call.
      * ``decode=True`` with ``is_cross``: a call with ``kv`` projects and caches the image keys/values
        (``cross_key``/``cross_value``); calls with ``kv=None`` reuse them.

    init_scheme "torch_default" (ViT and MaMMUT blocks, reference §4): q/k/v kernels xavier-uniform over the packed
    [3w, w] matrix, out kernel U(+-1/sqrt(w)), biases 0. "clip_text" (CLIP text tower): q/k/v ~ N(0, w^-0.5),
    out ~ N(0, w^-0.5 (2 * stack_depth)^-0.5).
    """

    width: int
    heads: int
    is_cross: bool = False
    init_scheme: InitScheme = "torch_default"
    stack_depth: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention: str = "xla"

    def _inits(self):
        w = self.width
        if self.init_scheme == "clip_text":
            return normal_init(w**-0.5), normal_init(w**-0.5 * (2 * self.stack_depth) ** -0.5)
        return uniform_init(math.sqrt(6.0 / (w + 3 * w))), uniform_init(1.0 / math.sqrt(w))

    @nn.compact
    def __call__(self, x, kv=None, mask=None, decode: bool = False):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        head_dim = self.width // self.heads
        in_init, out_init = self._inits()
        proj = lambda name: HeadsProjection(self.heads, head_dim, in_init, self.dtype, self.param_dtype,  # noqa
                                            name=name)

        q = constrain(proj("query")(x), (BATCH, LENGTH, HEADS, KV))
        if self.is_cross:
            k, v = self._cross_kv(proj, kv, decode)
            # MaMMUT cross-attention sees every image token: no mask (reference §2.3).
        else:
            if kv is not None:
                raise ValueError("self-attention got kv; build the block with is_cross=True for cross-attention")
            k = proj("key")(x)
            v = proj("value")(x)
            if decode:
                k, v, mask = self._update_cache(k, v, mask)
        k = constrain(k, (BATCH, LENGTH, HEADS, KV))
        v = constrain(v, (BATCH, LENGTH, HEADS, KV))
        y = dot_product_attention(q, k, v, mask=mask, dtype=self.dtype, implementation=self.attention)
        y = constrain(y, (BATCH, LENGTH, HEADS, KV))
        return HeadsOutput(self.width, out_init, self.dtype, self.param_dtype, name="out")(y)

    def _cross_kv(self, proj, kv, decode):
        if not decode:
            if kv is None:
                raise ValueError("cross-attention needs kv (the image tokens)")
            return proj("key")(kv), proj("value")(kv)
        if kv is not None:
            k, v = proj("key")(kv), proj("value")(kv)
            self.put_variable("cache", "cross_key", k)
            self.put_variable("cache", "cross_value", v)
            return k, v
        if not self.has_variable("cache", "cross_key"):
            raise ValueError("cross-attention decode step without cached image keys: pass kv on the first call")
        return self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")

    def _update_cache(self, k, v, mask):
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not initialized:  # allocation call: behave like a plain forward pass
            return k, v, mask
        idx = cache_index.value
        new_len = k.shape[1]
        keys = lax.dynamic_update_slice(cached_key.value, k.astype(cached_key.value.dtype), (0, idx, 0, 0))
        values = lax.dynamic_update_slice(cached_value.value, v.astype(cached_value.value.dtype), (0, idx, 0, 0))
        cached_key.value, cached_value.value = keys, values
        cache_index.value = idx + new_len
        query_pos = idx + jnp.arange(new_len)
        key_pos = jnp.arange(keys.shape[1])
        causal = (key_pos[None, :] <= query_pos[:, None])[None, None]
        return keys, values, causal


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


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: ``x += ls_1(attn(ln_1(x)[, ln_1_kv(kv)]))``, then, if has_mlp, ``x += ls_2(mlp(ln_2(x)))``.

    ``is_cross`` makes the attention a cross-attention onto ``kv`` normalised by its own ``ln_1_kv`` (MaMMUT).
    ``stack_depth`` is the number of blocks in the stack, used only by the "clip_text" init.
    """

    width: int
    heads: int
    mlp_ratio: float = 4.0
    has_mlp: bool = True
    is_cross: bool = False
    ls_init_value: float | None = None
    init_scheme: InitScheme = "torch_default"
    stack_depth: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(self, x, kv=None, mask=None, decode: bool = False):
        pd = self.param_dtype
        x = constrain(x, (BATCH, LENGTH, EMBED))
        h = layer_norm("ln_1", pd)(x)
        if self.is_cross and kv is not None:
            kv = layer_norm("ln_1_kv", pd)(kv)
        h = Attention(self.width, self.heads, is_cross=self.is_cross, init_scheme=self.init_scheme,
                      stack_depth=self.stack_depth, dtype=self.dtype, param_dtype=pd, attention=self.attention,
                      name="attn")(h, kv=kv, mask=mask, decode=decode)
        if self.ls_init_value is not None:
            h = LayerScale(self.ls_init_value, pd, name="ls_1")(h)
        x = x + h
        if self.has_mlp:
            h = layer_norm("ln_2", pd)(x)
            h = Mlp(self.width, int(self.width * self.mlp_ratio), init_scheme=self.init_scheme,
                    stack_depth=self.stack_depth, dtype=self.dtype, param_dtype=pd, name="mlp")(h)
            if self.ls_init_value is not None:
                h = LayerScale(self.ls_init_value, pd, name="ls_2")(h)
            x = x + h
        return constrain(x, (BATCH, LENGTH, EMBED))


class _ScannedBlock(ResidualAttentionBlock):
    """A block with the (carry, output) signature ``nn.scan`` needs."""

    def __call__(self, x, mask):  # type: ignore[override]
        return super().__call__(x, mask=mask), None


REMAT_POLICIES = {
    # Recompute each block's elementwise work and attention, keep its weight matmul outputs.
    "block": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Keep nothing inside a block: the least memory.
    "full": jax.checkpoint_policies.nothing_saveable,
}


class Transformer(nn.Module):
    """A homogeneous stack of ``layers`` blocks named ``resblocks_{i}``.

    With ``scan_layers`` the stack is one ``nn.scan`` named ``resblocks`` whose parameters carry a leading
    ``layers`` axis (``vlscale.models.layer_layout.stack_layers`` / ``unstack_layers`` convert between the layouts).
    ``remat``: "none" | "block" | "full" (see ``REMAT_POLICIES``).
    """

    width: int
    layers: int
    heads: int
    mlp_ratio: float = 4.0
    ls_init_value: float | None = None
    init_scheme: InitScheme = "torch_default"
    dtype: Any = jnp.float32
    remat: str = "none"
    scan_layers: bool = False
    param_dtype: Any = jnp.float32
    attention: str = "xla"

    def _block_kwargs(self):
        return dict(width=self.width, heads=self.heads, mlp_ratio=self.mlp_ratio, ls_init_value=self.ls_init_value,
                    init_scheme=self.init_scheme, stack_depth=self.layers, dtype=self.dtype,
                    param_dtype=self.param_dtype, attention=self.attention)

    @nn.compact
    def __call__(self, x, mask=None):
        if self.remat not in ("none", *REMAT_POLICIES):
            raise ValueError(f"remat {self.remat!r}: use 'none', 'block' or 'full'")
        if self.scan_layers:
            block_cls = _ScannedBlock
            if self.remat != "none":
                block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
            stack = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=nn.broadcast,
                length=self.layers,
                metadata_params={nn.PARTITION_NAME: LAYERS},
            )(name="resblocks", **self._block_kwargs())
            x, _ = stack(x, mask)
            return x
        block_cls = ResidualAttentionBlock
        if self.remat != "none":
            block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[self.remat])
        for i in range(self.layers):
            x = block_cls(name=f"resblocks_{i}", **self._block_kwargs())(x, None, mask)
        return x
