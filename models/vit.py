"""The vision tower: open_clip's ``VisionTransformer`` (reference §1.1, §2.2), shared by CLIP and MaMMUT.

Parameter paths: ``conv1/kernel [p, p, 3, w]`` (no bias), ``class_embedding [w]``, ``positional_embedding
[grid²+1, w]``, ``ln_pre``, ``transformer/resblocks_{i}/...``, ``ln_post``, ``proj [w, embed_dim]``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlscale.models.config import VisionConfig
from vlscale.models.layers import (
    BATCH,
    EMBED,
    LENGTH,
    PROJ,
    RESIDUAL_DTYPE,
    boxed,
    constrain,
    layer_norm,
    normal_init,
    uniform_init,
)
from vlscale.models.transformer import Transformer


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)(W/p), p·p·C], patch features ordered (row, col, channel) like a [p, p, C, w] kernel.

    A matmul with the reshaped kernel equals the stride-p, bias-free convolution open_clip uses.
    """
    b, h, w, c = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
    gh, gw = h // patch, w // patch
    x = images.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * gw, patch * patch * c)


class VisionTransformer(nn.Module):
    """ViT as open_clip builds it; returns ``(pooled [B, embed_dim], tokens [B, N, w])``.

    pool_type "tok" (CLIP): ``ln_post`` over all tokens, class token, ``@ proj``.
    pool_type "avg_all" + final_ln_after_pool (MaMMUT): mean over all N tokens (class token included), ``ln_post``,
    ``@ proj``. ``tokens`` are the raw transformer outputs (no ``ln_post``), what MaMMUT's cross-attention reads.
    """

    config: VisionConfig
    embed_dim: int
    dtype: Any = jnp.float32
    remat: str = "none"
    scan_layers: bool = False
    param_dtype: Any = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(self, images: jax.Array):
        cfg = self.config
        pd = self.param_dtype
        w, p = cfg.width, cfg.patch_size
        if images.shape[1:] != (cfg.image_size, cfg.image_size, 3):
            raise ValueError(f"expected images [B, {cfg.image_size}, {cfg.image_size}, 3], got {images.shape}")
        x = _Conv1(w, p, pd, name="conv1")(images.astype(self.dtype), self.dtype).astype(RESIDUAL_DTYPE)
        x = constrain(x, (BATCH, LENGTH, EMBED))
        scale = w**-0.5
        class_embedding = self.param("class_embedding", boxed(normal_init(scale), (EMBED,)), (w,), pd)
        positional = self.param("positional_embedding", boxed(normal_init(scale), (LENGTH, EMBED)),
                                (cfg.num_tokens, w), pd)
        cls = jnp.broadcast_to(class_embedding.astype(RESIDUAL_DTYPE), (x.shape[0], 1, w))
        x = jnp.concatenate([cls, x], axis=1) + positional.astype(RESIDUAL_DTYPE)
        x = layer_norm("ln_pre", pd)(x)
        x = Transformer(w, cfg.layers, cfg.heads, mlp_ratio=cfg.mlp_ratio, ls_init_value=cfg.ls_init_value,
                        init_scheme="torch_default", dtype=self.dtype, remat=self.remat,
                        scan_layers=self.scan_layers, param_dtype=pd, attention=self.attention,
                        name="transformer")(x)
        tokens = x
        ln_post = layer_norm("ln_post", pd)
        if cfg.pool_type == "tok" and not cfg.final_ln_after_pool:
            pooled = ln_post(x)[:, 0]
        elif cfg.pool_type == "avg_all" and cfg.final_ln_after_pool:
            pooled = ln_post(jnp.mean(x, axis=1))
        else:
            raise ValueError(f"unsupported pooling {cfg.pool_type!r} "
                             f"with final_ln_after_pool={cfg.final_ln_after_pool}")
        proj = self.param("proj", boxed(normal_init(scale), (EMBED, PROJ)), (w, self.embed_dim), pd)
        pooled = pooled.astype(self.dtype) @ proj.astype(self.dtype)
        return pooled, tokens


class _Conv1(nn.Module):
    """The bias-free patch convolution, parameter ``kernel [p, p, 3, w]`` (torch ``conv1.weight`` transposed).

    Init as torch Conv2d: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)), fan_in = 3 p² (reference §4).
    """

    width: int
    patch: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, dtype):
        p = self.patch
        fan_in = 3 * p * p
        kernel = self.param("kernel", boxed(uniform_init(1 / math.sqrt(fan_in)), (None, None, None, EMBED)),
                            (p, p, 3, self.width), self.param_dtype)
        patches = patchify(images, p)
        return patches @ kernel.reshape(fan_in, self.width).astype(dtype)
