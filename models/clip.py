"""CLIP as open_clip's ``CLIP`` class builds it: a ViT plus a causal text transformer flattened at the top level.

Parameter paths mirror the state dict (reference §3.1): ``visual/...``, ``token_embedding/embedding``,
``positional_embedding``, ``transformer/resblocks_{i}/...``, ``ln_final``, ``text_projection [tw, E]``,
``logit_scale`` (scalar, used as exp).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlscale.models.attention import causal_mask
from vlscale.models.config import ModelConfig, RuntimeOptions
from vlscale.models.layers import (
    BATCH,
    EMBED,
    LENGTH,
    POSITION_EMBED_STD,
    PROJ,
    RESIDUAL_DTYPE,
    TOKEN_EMBED_STD,
    VOCAB,
    boxed,
    compute_dtype,
    constant_init,
    constrain,
    embed_tokens,
    l2_normalize,
    layer_norm,
    normal_init,
)
from vlscale.models.transformer import Transformer
from vlscale.models.vit import VisionTransformer



class CLIP(nn.Module):
    """Functional CLIP: ``encode_image``, ``encode_text`` and ``__call__`` (what ``clip_loss`` needs).

    ``encode_*`` default to ``normalize=False`` as in open_clip; ``__call__`` returns L2-normalised features.
    """

    config: ModelConfig
    runtime: RuntimeOptions = RuntimeOptions()

    def setup(self):
        cfg, rt = self.config, self.runtime
        text = cfg.text
        dtype, pd = compute_dtype(rt.dtype), compute_dtype(rt.param_dtype)
        self.visual = VisionTransformer(cfg.vision, cfg.embed_dim, dtype=dtype, remat=rt.remat,
                                        scan_layers=rt.scan_layers, param_dtype=pd, attention=rt.attention)
        self.token_embedding = nn.Embed(text.vocab_size, text.width, dtype=dtype, param_dtype=pd,
                                        embedding_init=boxed(normal_init(TOKEN_EMBED_STD), (VOCAB, EMBED)))
        self.positional_embedding = self.param(
            "positional_embedding", boxed(normal_init(POSITION_EMBED_STD), (LENGTH, EMBED)),
            (text.context_length, text.width), pd)
        self.transformer = Transformer(text.width, text.layers, text.heads, mlp_ratio=text.mlp_ratio,
                                       init_scheme="clip_text", dtype=dtype, remat=rt.remat,
                                       scan_layers=rt.scan_layers, param_dtype=pd, attention=rt.attention)
        self.ln_final = layer_norm(param_dtype=pd)
        self.text_projection = self.param("text_projection", boxed(normal_init(text.width**-0.5), (EMBED, PROJ)),
                                          (text.width, cfg.embed_dim), pd)
        self.logit_scale = self.param("logit_scale", boxed(constant_init(cfg.init_logit_scale), ()), (),
                                      jnp.float32)

    def encode_image(self, images: jax.Array, normalize: bool = False) -> jax.Array:
        """images: [B, H, W, 3] float (eval_transform output) -> [B, embed_dim]."""
        pooled, _ = self.visual(images)
        return l2_normalize(pooled) if normalize else pooled

    def encode_text(self, tokens: jax.Array, normalize: bool = False) -> jax.Array:
        """tokens: int [B, context_length] (the full zero-padded length) -> [B, embed_dim], pooled at EOT."""
        ctx = self.config.text.context_length
        if tokens.shape[-1] != ctx:
            raise ValueError(f"expected tokens [B, {ctx}] (zero-padded), got {tokens.shape}")
        dtype = compute_dtype(self.runtime.dtype)
        x = (embed_tokens(self.token_embedding, tokens, RESIDUAL_DTYPE)
             + self.positional_embedding.astype(RESIDUAL_DTYPE))
        x = constrain(x, (BATCH, LENGTH, EMBED))
        x = self.transformer(x, causal_mask(ctx))
        x = self.ln_final(x)
        # EOT (49407) is the largest id, so argmax finds it (open_clip text_global_pool 'argmax').
        eot = jnp.argmax(tokens, axis=-1)
        pooled = x[jnp.arange(x.shape[0]), eot]
        pooled = pooled.astype(dtype) @ self.text_projection.astype(dtype)
        return l2_normalize(pooled) if normalize else pooled

    def __call__(self, images: jax.Array, tokens: jax.Array) -> dict:
        return {
            "image_features": self.encode_image(images, normalize=True),
            "text_features": self.encode_text(tokens, normalize=True),
            "logit_scale": jnp.exp(self.logit_scale),
        }
