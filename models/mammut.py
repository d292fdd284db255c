"""MaMMUT as open_clip_mammut builds it (reference §2): a ViT plus ONE text decoder used in two passes.

* Contrastive pass (``encode_text``): the decoder without mask and without cross-attention; the text embedding
  is the mean of the ``ln_final`` output over ALL context positions (pads and post-EOT positions included) and
  has no projection, so ``embed_dim == text width``.
* Captioning pass (``caption_logits``): the same weights with a causal mask and a cross-attention block after
  every even self block, attending to all image tokens (class token included) mapped by ``map_viz2txt_kv`` and
  normalised by each block's ``ln_1_kv``; ``ln_final`` then the LM head ``text_projection [tw, vocab]`` (no bias).

Parameter paths mirror the fork's state-dict keys (reference §3.2): ``visual/...`` (as CLIP's),
``text/token_embedding/embedding``, ``text/positional_embedding``, ``text/resblocks_{i}/...``,
``text/cross_attn_{j}/{ln_1,ln_1_kv,attn,ln_2,mlp}``, ``text/ln_final``, ``text/text_projection``,
``map_viz2txt_kv [vw, tw]``, ``logit_scale``. With ``has_mlp=False`` the even self blocks have no ``ln_2``/``mlp``.

With ``RuntimeOptions.scan_layers`` the decoder runs one ``nn.scan`` over groups (self block 2g, cross block g,
self block 2g+1), stored under ``text/layer_groups/{self_even,cross,self_odd}`` with a leading group axis;
``unscan_decoder_params`` / ``scan_decoder_params`` convert to and from the per-block layout of the checkpoints.

Defaults follow the fork and differ from CLIP on purpose: ``encode_image`` / ``encode_text`` return
L2-normalised features unless ``normalize=False`` (``MaMMUT._encode_image`` / ``encode_text`` do the same).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlscale.models.attention import causal_mask
from vlscale.models.config import ModelConfig, RuntimeOptions, TextConfig
from vlscale.models.layers import (
    BATCH,
    EMBED,
    LAYERS,
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
from vlscale.models.transformer import REMAT_POLICIES, ResidualAttentionBlock
from vlscale.models.vit import VisionTransformer

# MultimodalTransformer.init_parameters (reference §4): embeddings as CLIP's text tower (layers.py), LM head zeros.
# mammut_model.py L84: map_viz2txt_kv = torch.randn(vision_width, text_width), i.e. N(0, 1) with no scaling.
MAP_VIZ2TXT_STD = 1.0
GROUP_NAMES = ("self_even", "cross", "self_odd")


class _Block(ResidualAttentionBlock):
    """A training-mode block with only array arguments, so ``nn.remat`` can wrap it."""

    def __call__(self, x, kv=None, mask=None):  # type: ignore[override]
        return super().__call__(x, kv=kv, mask=mask, decode=False)


class _DecoderGroup(nn.Module):
    """Self block 2g (attention-only unless has_mlp), cross block g, self block 2g+1: the scan body.

    Without image memory (contrastive pass) the cross block is skipped and the same stacked self blocks run.
    """

    config: TextConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention: str = "xla"

    @nn.compact
    def __call__(self, x, inputs):
        kv, mask = inputs
        cfg = self.config
        block = lambda name, **kw: _Block(cfg.width, cfg.heads, mlp_ratio=cfg.mlp_ratio, dtype=self.dtype,  # noqa: E731
                                          param_dtype=self.param_dtype, attention=self.attention, name=name, **kw)
        x = block("self_even", has_mlp=cfg.has_mlp)(x, mask=mask)
        if kv is not None:
            x = block("cross", is_cross=True)(x, kv=kv)
        x = block("self_odd")(x, mask=mask)
        return x, None


class TextDecoder(nn.Module):
    """open_clip_mammut ``MultimodalTransformer`` with ``does_full_decoding`` (reference §2.3-2.4).

    ``__call__(tokens, image_embs=None, decode=False, lm_head=True) -> (logits | None, h)``:
    without ``image_embs`` it is the bidirectional contrastive pass; with them (or in decode mode) it is the
    causal captioning pass. ``decode=True`` runs on a KV cache (see ``MaMMUT.decode_text``).
    """

    config: TextConfig
    dtype: Any = jnp.float32
    remat: str = "none"
    scan_layers: bool = False
    param_dtype: Any = jnp.float32
    attention: str = "xla"

    def _block_cls(self, decode):
        if decode or self.remat == "none":
            return ResidualAttentionBlock if decode else _Block
        return nn.remat(_Block, policy=REMAT_POLICIES[self.remat])

    def _check(self, decode):
        cfg = self.config
        if decode and self.scan_layers:
            raise ValueError("cached decoding runs the per-block layout: build the model with scan_layers=False "
                             "and convert the params with to_checkpoint_layout (vlscale.models.generate does both)")
        if cfg.cross_attn_ratio != 2 or cfg.layers % 2:
            # Every paper config has ratio 2 and an even depth; the group scan and the block schedule assume it.
            raise ValueError(f"MaMMUT decoder needs cross_attn_ratio 2 and even layers, got {cfg}")
        if self.remat not in ("none", *REMAT_POLICIES):
            raise ValueError(f"remat {self.remat!r}: use 'none', 'block' or 'full'")

    @nn.compact
    def __call__(self, tokens, image_embs=None, decode: bool = False, lm_head: bool | str = True):
        """``lm_head``: True -> (logits, h); False -> (None, h); "weight" -> (the LM head [w, V] unapplied, h),
        for a loss that applies it in chunks (``vlscale.train.losses.caption_loss_from_hidden``)."""
        self._check(decode)
        cfg = self.config
        length = tokens.shape[1]
        if length > cfg.context_length:
            raise ValueError(f"{length} tokens exceed the context length {cfg.context_length}")
        # jax.nn.dot_product_attention ("dot_product") wants lengths that are multiples of 8 (77 and 76 are not): pad
        # at the end. Causal masking already hides trailing positions from real queries; the bidirectional pass
        # masks them as keys; their outputs are cut off below. The fused kernels ("cudnn", "pallas", and "auto"
        # where it picks one) pad inside the attention call (models/attention.py), so the model does not.
        pad = (-length) % 8 if self.attention == "dot_product" and not decode else 0
        if pad:
            tokens = jnp.pad(tokens, ((0, 0), (0, pad)))
        padded = length + pad
        embed = nn.Embed(cfg.vocab_size, cfg.width, dtype=self.dtype, param_dtype=self.param_dtype,
                         embedding_init=boxed(normal_init(TOKEN_EMBED_STD), (VOCAB, EMBED)), name="token_embedding")
        positional = self.param("positional_embedding", boxed(normal_init(POSITION_EMBED_STD), (LENGTH, EMBED)),
                                (cfg.context_length, cfg.width), self.param_dtype)
        positions = jnp.minimum(self._positions(padded, decode), cfg.context_length - 1)
        x = (embed_tokens(embed, tokens, RESIDUAL_DTYPE)
             + jnp.take(positional, positions, axis=0).astype(RESIDUAL_DTYPE))
        x = constrain(x, (BATCH, LENGTH, EMBED))

        captioning = decode or image_embs is not None
        if captioning:
            mask = causal_mask(padded)
        else:
            mask = (jnp.arange(padded) < length)[None, None, None, :] if pad else None
        if image_embs is not None:
            image_embs = constrain(image_embs.astype(self.dtype), (BATCH, LENGTH, EMBED))
        if self.scan_layers:
            x = self._scanned_blocks(x, image_embs, mask)
        else:
            x = self._unrolled_blocks(x, image_embs, mask, decode)
        h = layer_norm("ln_final", self.param_dtype)(x).astype(self.dtype)  # x: the float32 residual stream
        if pad:
            h = h[:, :length]
        if not lm_head:
            return None, h
        head = self.param("text_projection", boxed(nn.initializers.zeros, (EMBED, VOCAB)),
                          (cfg.width, cfg.vocab_size), self.param_dtype)
        if lm_head == "weight":
            return head, h
        logits = h @ head.astype(self.dtype)
        return constrain(logits, (BATCH, LENGTH, VOCAB)), h

    def _positions(self, length, decode):
        """Absolute positions of the input tokens: 0..L-1, or after the cached prefix in decode mode."""
        if not decode:
            return jnp.arange(length)
        initialized = self.has_variable("cache", "position")
        position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
        if not initialized:  # cache allocation call (see MaMMUT.decode_text)
            return jnp.arange(length)
        start = position.value
        position.value = start + length
        return start + jnp.arange(length)

    def _unrolled_blocks(self, x, image_embs, mask, decode):
        cfg = self.config
        block_cls = self._block_cls(decode)
        kw = dict(width=cfg.width, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, dtype=self.dtype,
                  param_dtype=self.param_dtype, attention=self.attention)
        extra = {"decode": True} if decode else {}
        for i in range(cfg.layers):
            x = block_cls(has_mlp=cfg.self_block_has_mlp(i), name=f"resblocks_{i}", **kw)(x, None, mask, **extra)
            if i % cfg.cross_attn_ratio == 0 and (decode or image_embs is not None):
                cross = block_cls(is_cross=True, name=f"cross_attn_{i // cfg.cross_attn_ratio}", **kw)
                x = cross(x, image_embs, None, **extra)
        return x

    def _scanned_blocks(self, x, image_embs, mask):
        cfg = self.config
        group_cls = _DecoderGroup
        if self.remat != "none":
            group_cls = nn.remat(group_cls, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        stack = nn.scan(group_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=nn.broadcast, length=cfg.layers // 2,
                        metadata_params={nn.PARTITION_NAME: LAYERS})
        x, _ = stack(cfg, self.dtype, self.param_dtype, self.attention, name="layer_groups")(x, (image_embs, mask))
        return x


class MaMMUT(nn.Module):
    """Functional MaMMUT: ``encode_image``, ``encode_text``, ``caption_logits``, ``__call__`` (what the losses need).

    ``__call__(images, tokens, train=True)`` returns ``image_features``, ``text_features`` (L2-normalised),
    ``logit_scale`` (= exp of the parameter), ``logits`` [B, L-1, V] from ``tokens[:, :-1]`` and ``labels``
    ``tokens[:, 1:]``. ``train=False`` follows the fork's ``is_training=False``: no contrastive pass and logits
    for every input position.
    """

    config: ModelConfig
    runtime: RuntimeOptions = RuntimeOptions()

    def setup(self):
        cfg, rt = self.config, self.runtime
        if cfg.family != "mammut":
            raise ValueError(f"{cfg.name} is a {cfg.family} config, not MaMMUT")
        if cfg.embed_dim != cfg.text.width:
            raise ValueError(f"MaMMUT needs embed_dim == text width ({cfg.embed_dim} != {cfg.text.width})")
        dtype = compute_dtype(rt.dtype)
        pd = compute_dtype(rt.param_dtype)
        self.visual = VisionTransformer(cfg.vision, cfg.embed_dim, dtype=dtype, remat=rt.remat, param_dtype=pd,
                                        attention=rt.attention,
                                        scan_layers=rt.scan_layers)
        self.text = TextDecoder(cfg.text, dtype=dtype, remat=rt.remat, scan_layers=rt.scan_layers, param_dtype=pd,
                                attention=rt.attention)
        self.map_viz2txt_kv = self.param("map_viz2txt_kv", boxed(normal_init(MAP_VIZ2TXT_STD), (EMBED, PROJ)),
                                         (cfg.vision.width, cfg.text.width), pd)
        self.logit_scale = self.param("logit_scale", boxed(constant_init(cfg.init_logit_scale), ()), (),
                                      jnp.float32)

    # --- image ---------------------------------------------------------------------------------------------------

    def encode_image(self, images: jax.Array, normalize: bool = True) -> jax.Array:
        """images [B, H, W, 3] -> [B, embed_dim]: ``ln_post(mean of all tokens) @ proj``, normalised by default."""
        latent, _ = self.visual(images)
        return l2_normalize(latent) if normalize else latent

    def image_memory(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(un-normalised latent [B, E], cross-attention memory ``tokens @ map_viz2txt_kv`` [B, N, tw])."""
        latent, tokens = self.visual(images)
        return latent, self._map_tokens(tokens)

    def _map_tokens(self, tokens):
        dtype = compute_dtype(self.runtime.dtype)
        memory = tokens.astype(dtype) @ self.map_viz2txt_kv.astype(dtype)
        return constrain(memory, (BATCH, LENGTH, EMBED))

    # --- text ----------------------------------------------------------------------------------------------------

    def encode_text(self, tokens: jax.Array, normalize: bool = True) -> jax.Array:
        """tokens int [B, context_length] (zero-padded) -> mean over all positions of the bidirectional pass."""
        ctx = self.config.text.context_length
        if tokens.shape[-1] != ctx:
            raise ValueError(f"expected tokens [B, {ctx}] (zero-padded; the mean runs over all of them), "
                             f"got {tokens.shape}")
        _, h = self.text(tokens, lm_head=False)
        pooled = jnp.mean(h.astype(jnp.float32), axis=1)
        return l2_normalize(pooled) if normalize else pooled

    def caption_logits(self, images: jax.Array, tokens: jax.Array) -> jax.Array:
        """Next-token logits [B, L, V] of the causal, cross-attending pass; position t sees tokens 0..t only."""
        _, memory = self.image_memory(images)
        return self.caption_logits_from_memory(memory, tokens)

    def caption_logits_from_memory(self, memory: jax.Array, tokens: jax.Array) -> jax.Array:
        """``caption_logits`` for an image already encoded by ``image_memory`` (e.g. scoring many prompts)."""
        logits, _ = self.text(tokens, image_embs=memory)
        return logits

    def decode_text(self, tokens: jax.Array, memory: jax.Array | None = None, lm_head: bool = True):
        """One cached decoding step of the captioning pass (``apply(..., mutable=['cache'])``).

        The first call, with ``memory`` and tokens of the maximum decode length, only allocates the cache and
        stores each cross block's projected image keys/values; later calls feed the new token(s) with
        ``memory=None`` and return their logits [B, L, V]. Used by ``vlscale.models.generate``.
        """
        logits, h = self.text(tokens, image_embs=memory, decode=True, lm_head=lm_head)
        return logits if lm_head else h

    # --- training forward ----------------------------------------------------------------------------------------

    def __call__(self, images: jax.Array, tokens: jax.Array, train: bool = True, caption_head: bool = True) -> dict:
        """``caption_head=False`` returns ``caption_hidden`` (the decoder's ``ln_final`` output [B, L-1, w]) and
        ``lm_head`` ([w, V]) instead of ``logits``, so the loss can apply the head in chunks
        (``losses.caption_loss_from_hidden``) and the [B, L-1, V] logits never exist whole."""
        latent, memory = self.image_memory(images)
        out = {"image_features": l2_normalize(latent), "logit_scale": jnp.exp(self.logit_scale)}
        # Captioning first: under ``init`` it creates every decoder parameter (the cross blocks included), which
        # the scanned layout needs before the contrastive pass reuses the self blocks.
        # Training drops the last token: it has no label (mammut_model.py _forward).
        caption_tokens = tokens[:, :-1] if train else tokens
        if caption_head:
            out["logits"] = self.caption_logits_from_memory(memory, caption_tokens)
        else:
            out["lm_head"], out["caption_hidden"] = self.text(caption_tokens, image_embs=memory, lm_head="weight")
        out["labels"] = tokens[:, 1:]
        if train:
            out["text_features"] = self.encode_text(tokens, normalize=True)
        return out


# --- scan layout <-> per-block layout -------------------------------------------------------------------------------


def unscan_decoder_params(text_params: Mapping) -> dict:
    """``text`` params with ``layer_groups`` stacked [G, ...] -> ``resblocks_{i}`` / ``cross_attn_{j}`` entries."""
    out = {k: v for k, v in text_params.items() if k != "layer_groups"}
    if "layer_groups" not in text_params:
        return dict(text_params)
    groups = text_params["layer_groups"]
    n = jax.tree.leaves(groups[GROUP_NAMES[0]])[0].shape[0]
    for g in range(n):
        pick = lambda tree: jax.tree.map(lambda a: a[g], tree)  # noqa: E731
        out[f"resblocks_{2 * g}"] = pick(groups["self_even"])
        out[f"cross_attn_{g}"] = pick(groups["cross"])
        out[f"resblocks_{2 * g + 1}"] = pick(groups["self_odd"])
    return out


def scan_decoder_params(text_params: Mapping) -> dict:
    """Inverse of ``unscan_decoder_params``: per-block ``text`` params -> stacked ``layer_groups``."""
    n = sum(1 for k in text_params if k.startswith("cross_attn_"))
    out = {k: v for k, v in text_params.items() if not k.startswith(("resblocks_", "cross_attn_"))}
    stack = lambda trees: jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *trees)  # noqa: E731
    out["layer_groups"] = {
        "self_even": stack([text_params[f"resblocks_{2 * g}"] for g in range(n)]),
        "cross": stack([text_params[f"cross_attn_{g}"] for g in range(n)]),
        "self_odd": stack([text_params[f"resblocks_{2 * g + 1}"] for g in range(n)]),
    }
    return out


def to_checkpoint_layout(params: Mapping) -> dict:
    """MaMMUT params with the text decoder in the per-block (checkpoint) layout, whatever the runtime layout."""
    params = dict(params)
    params["text"] = unscan_decoder_params(params["text"])
    return params


def to_scan_layout(params: Mapping) -> dict:
    """MaMMUT params with the text decoder stacked for ``scan_layers=True`` (the vision tower is left alone)."""
    params = dict(params)
    if "layer_groups" not in params["text"]:
        params["text"] = scan_decoder_params(params["text"])
    return params
