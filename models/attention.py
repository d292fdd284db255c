"""Multi-head attention with open_clip's parameters split per projection (``attn/{query,key,value,out}``), its
softmax(q k^T / sqrt(hd)) v kernel choices and the causal mask; a KV cache for decoding."""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vlscale.models.layers import BATCH, EMBED, HEADS, KV, LENGTH, InitScheme, boxed, constrain, normal_init, uniform_init


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

