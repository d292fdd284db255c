"""The pre-LN residual attention block and the homogeneous stack of them (``Transformer``), unrolled or scanned,
with optional rematerialisation."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlscale.models.attention import Attention
from vlscale.models.layers import (
    BATCH,
    EMBED,
    LAYERS,
    LENGTH,
    RESIDUAL_DTYPE,
    InitScheme,
    LayerScale,
    Mlp,
    constrain,
    layer_norm,
)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: ``x += ls_1(attn(ln_1(x)[, ln_1_kv(kv)]))``, then, if has_mlp, ``x += ls_2(mlp(ln_2(x)))``.

    ``is_cross`` makes the attention a cross-attention onto ``kv`` normalised by its own ``ln_1_kv`` (MaMMUT).
    ``stack_depth`` is the number of blocks in the stack, used only by the "clip_text" init.
    The residual ``x`` is kept in float32 (``RESIDUAL_DTYPE``); the norms' outputs enter attention and the MLP
    in ``dtype``, whose outputs are added to the float32 sum.
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
        x = constrain(x.astype(RESIDUAL_DTYPE), (BATCH, LENGTH, EMBED))
        h = layer_norm("ln_1", pd)(x).astype(self.dtype)
        if self.is_cross and kv is not None:
            kv = layer_norm("ln_1_kv", pd)(kv).astype(self.dtype)
        h = Attention(self.width, self.heads, is_cross=self.is_cross, init_scheme=self.init_scheme,
                      stack_depth=self.stack_depth, dtype=self.dtype, param_dtype=pd, attention=self.attention,
                      name="attn")(h, kv=kv, mask=mask, decode=decode)
        if self.ls_init_value is not None:
            h = LayerScale(self.ls_init_value, pd, name="ls_1")(h)
        x = x + h.astype(RESIDUAL_DTYPE)
        if self.has_mlp:
            h = layer_norm("ln_2", pd)(x).astype(self.dtype)
            h = Mlp(self.width, int(self.width * self.mlp_ratio), init_scheme=self.init_scheme,
                    stack_depth=self.stack_depth, dtype=self.dtype, param_dtype=pd, name="mlp")(h)
            if self.ls_init_value is not None:
                h = LayerScale(self.ls_init_value, pd, name="ls_2")(h)
            x = x + h.astype(RESIDUAL_DTYPE)
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
