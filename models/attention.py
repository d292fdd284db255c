"""Multi-head attention with open_clip's parameters split per projection (``attn/{query,key,value,out}``), its
softmax(q k^T / sqrt(hd)) v kernel choices and the causal mask; a KV cache for decoding."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
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



@dataclasses.dataclass(frozen=True)
class CausalMask:
    """The causal mask of a length-``length`` self-attention, kept symbolic so fused kernels can take their causal
    flag instead of a materialised [L, L] mask. ``np.asarray(m)`` (and ``as_array``) gives the boolean
    [1, 1, L, L] array, True where a query may attend (key position <= query position): open_clip's additive mask
    (-inf above the diagonal, reference §1.2). A pytree without leaves, so it passes through ``nn.scan``/``remat``.
    """

    length: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (1, 1, self.length, self.length)

    def __array__(self, dtype=None, copy=None):
        pos = np.arange(self.length)
        m = (pos[None, :] <= pos[:, None])[None, None]
        return m if dtype is None else m.astype(dtype)


jax.tree_util.register_pytree_node(CausalMask, lambda m: ((), m.length), lambda length, _: CausalMask(length))


def causal_mask(length: int) -> CausalMask:
    """The causal mask of ``length`` positions (see ``CausalMask``); broadcastable to [B, H, L, L] once converted."""
    return CausalMask(int(length))


def as_array(mask):
    """A mask argument as a boolean array (``CausalMask`` materialised), None stays None."""
    if mask is None:
        return None
    if isinstance(mask, CausalMask):
        return jnp.asarray(np.asarray(mask))
    return jnp.asarray(mask)


# RuntimeOptions.attention -> how dot_product_attention runs.
ATTENTION_IMPLEMENTATIONS = ("xla", "dot_product", "cudnn", "pallas", "auto")

# Lengths the fused kernels are run at: q, k and v are padded at the end to a multiple of this, padded keys are
# masked out and padded query rows are cut off the output. cuDNN: 64, the tile of its flash kernels (JAX refuses a
# training-mode cuDNN call with a mask/bias and an odd length, i.e. CLIP's 77/197/257; 64 also covers the even 50).
# Pallas TPU flash attention: 128, its minimum block and lane width (key masking via segment ids needs kv blocks
# that are multiples of 128).
PAD_MULTIPLE = {"cudnn": 64, "pallas": 128}


def resolve_attention(implementation: str, dtype: Any = jnp.float32, platform: str | None = None,
                      head_dim: int | None = None) -> str:
    """The kernel ``implementation`` runs as: "auto" is cuDNN's fused attention on GPU (it needs bf16/fp16 compute
    and, when known, a head dim that is a multiple of 8 and at most 128), JAX's Pallas flash attention on TPU and
    the XLA einsum elsewhere (CPU) or when cuDNN cannot take the call. Other names map to themselves."""
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention {implementation!r}: use one of {ATTENTION_IMPLEMENTATIONS}")
    if implementation != "auto":
        return implementation
    platform = platform or jax.default_backend()
    if platform == "tpu":
        return "pallas"
    if platform in ("gpu", "cuda"):
        half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        head_ok = head_dim is None or (head_dim % 8 == 0 and head_dim <= 128)
        return "cudnn" if half and head_ok else "xla"
    return "xla"


def dot_product_attention(q, k, v, mask=None, dtype=jnp.float32, implementation: str = "xla"):
    """Softmax(q k^T / sqrt(hd)) v over [B, L, H, hd] inputs; logits (accumulated) and softmax in float32.

    ``mask``: None, a ``CausalMask`` or a boolean array broadcastable to [B, H, Lq, Lk], True = attend.
    ``implementation``: "xla" is the einsum below (the parity reference); "dot_product" calls
    ``jax.nn.dot_product_attention`` and lets JAX pick the kernel; "cudnn" forces its cuDNN fused kernel (GPU,
    bf16/fp16 only) and "pallas" JAX's Pallas flash attention for TPU, both on lengths padded to
    ``PAD_MULTIPLE`` (see ``fused_attention``); "auto" picks per platform (``resolve_attention``).
    """
    implementation = resolve_attention(implementation, dtype, head_dim=q.shape[-1])
    if implementation in PAD_MULTIPLE:
        return fused_attention(q, k, v, mask, dtype, implementation)
    if implementation == "dot_product":
        out = jax.nn.dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), mask=as_array(mask))
        return out.astype(dtype)
    return _einsum_attention(q, k, v, as_array(mask), dtype)


def _einsum_attention(q, k, v, mask, dtype):
    head_dim = q.shape[-1]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(head_dim)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _pad_length(x, multiple):
    pad = (-x.shape[1]) % multiple
    return jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) if pad else x


def _split_mask(mask, batch: int, lk: int):
    """(causal flag, key mask [B, Lk] or None, general [.., Lq, Lk] mask or None) of a mask argument."""
    if mask is None:
        return False, None, None
    if isinstance(mask, CausalMask):
        return True, None, None
    mask = jnp.asarray(mask)
    if mask.ndim == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:  # a key mask, e.g. MaMMUT's text padding
        return False, jnp.broadcast_to(mask[:, 0, 0, :], (batch, lk)), None
    return False, None, mask


def fused_attention(q, k, v, mask, dtype, kernel: str, multiple: int | None = None):
    """``dot_product_attention`` through a fused kernel on padded lengths; values and gradients equal the XLA
    path's (padded keys get no weight, padded query rows are sliced off and so carry no gradient).

    ``kernel``: "cudnn" | "pallas" | "xla" (``jax.nn.dot_product_attention``'s own XLA implementation, used to
    test the padding on CPU). ``multiple`` (default ``PAD_MULTIPLE[kernel]``): what lengths are padded to.
    Masks: a ``CausalMask`` becomes the kernel's causal flag (with Lq == Lk the padded keys follow every real
    query, so nothing else is needed); a key mask [B|1, 1, 1, Lk] and the key padding become cuDNN's
    ``key_value_seq_lengths`` or a mask, Pallas' segment ids; another mask array is passed to cuDNN as a mask
    and makes the Pallas path fall back to the XLA einsum (Pallas' flash kernel takes no general mask).
    """
    batch, lq, heads, head_dim = q.shape
    lk = k.shape[1]
    causal, key_mask, general = _split_mask(mask, batch, lk)
    if causal and lq != lk:
        raise ValueError(f"a causal mask needs equal query and key lengths, got {lq} and {lk}")
    multiple = multiple or PAD_MULTIPLE[kernel]
    if kernel == "pallas" and general is not None:
        return _einsum_attention(q, k, v, general, dtype)
    qp, kp, vp = (_pad_length(x.astype(dtype), multiple) for x in (q, k, v))
    lqp, lkp = qp.shape[1], kp.shape[1]
    key_valid = jnp.arange(lkp) < lk
    if key_mask is not None:
        key_valid = key_valid & jnp.pad(key_mask, ((0, 0), (0, lkp - lk)))
    if kernel == "pallas":
        kv_valid = jnp.broadcast_to(key_valid, (batch, lkp)).astype(jnp.int32)
        flash = lambda *a: _pallas_flash(*a, causal=causal, head_dim=head_dim)  # noqa: E731
        out = _per_device(flash, qp, kp, vp, kv_valid)
    else:
        impl = "cudnn" if kernel == "cudnn" else "xla"
        kw = {}
        if general is not None or key_mask is not None:
            m = key_valid if key_valid.ndim == 2 else key_valid[None]
            m = m[:, None, None, :]
            if general is not None:
                g = jnp.pad(general, [(0, 0)] * (general.ndim - 2) + [(0, lqp - lq), (0, lkp - lk)],
                            constant_values=True)
                m = m & g
            kw["mask"] = jnp.broadcast_to(m, m.shape[:2] + (lqp, lkp))
        elif lkp != lk and not (causal and lqp == lkp):
            kw["key_value_seq_lengths"] = jnp.full((batch,), lk, jnp.int32)
        out = jax.nn.dot_product_attention(qp, kp, vp, is_causal=causal, implementation=impl, **kw)
    return out[:, :lq].astype(dtype)


def _mesh_axes_dividing(logical: str, size: int, mesh) -> tuple[str, ...] | None:
    """The mesh axes the active logical rules put ``logical`` on, the longest prefix of them whose sizes divide
    ``size``; None when there is none."""
    axes = nn.logical_to_mesh_axes((logical,))[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if a in mesh.shape)
    while axes and size % math.prod(mesh.shape[a] for a in axes):
        axes = axes[:-1]
    return axes or None


def _per_device(fn, q, k, v, kv_valid):
    """``fn(q, k, v, kv_valid)`` under ``jax.shard_map`` over the batch and heads axes of the active mesh (a Pallas
    kernel is one custom call that XLA's partitioner cannot split: without this it would gather its operands onto
    every device). Plain call when no mesh is set."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn(q, k, v, kv_valid)
    from jax.sharding import PartitionSpec as P

    b = _mesh_axes_dividing(BATCH, q.shape[0], mesh)
    h = _mesh_axes_dividing(HEADS, q.shape[2], mesh)
    spec = P(b, None, h, None)
    return jax.shard_map(fn, in_specs=(spec, spec, spec, P(b, None)), out_specs=spec, check_vma=False)(
        q, k, v, kv_valid)


def _pallas_flash(q, k, v, kv_valid, causal: bool, head_dim: int):
    """JAX's Pallas TPU flash attention on [B, L, H, hd] inputs already padded to multiples of 128; ``kv_valid``
    [B, Lk] int32 is 1 for real keys: padded keys are a second segment (every query is in the first)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    batch, lq = q.shape[:2]
    seg = fa.SegmentIds(q=jnp.ones((batch, lq), jnp.int32), kv=kv_valid)
    to_bhld = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731
    out = fa.flash_attention(to_bhld(q), to_bhld(k), to_bhld(v), segment_ids=seg, causal=causal,
                             sm_scale=1.0 / math.sqrt(head_dim))
    return jnp.swapaxes(out, 1, 2)


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
        # A decode step (few queries against the cache) stays on the einsum: fused kernels gain nothing there.
        impl = "xla" if decode else self.attention
        y = dot_product_attention(q, k, v, mask=mask, dtype=self.dtype, implementation=impl)
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

