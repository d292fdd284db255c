"""Training objectives of the paper's runs: CLIP InfoNCE and MaMMUT's contrastive + captioning sum.

All losses are pure functions of model outputs, computed in float32 whatever the compute dtype, so a
bf16 forward still gets an fp32 log-softmax. The contrastive loss works on the *global* batch: under
``jit`` with batch-sharded features, XLA inserts the all-gathers that open_clip's
``--local-loss --gather-with-grad`` performs by hand, and the gradient is the same (reference §1.4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# open_clip CoCaLoss defaults, unchanged by the paper's training command (reference §2.5).
CLIP_LOSS_WEIGHT = 1.0
CAPTION_LOSS_WEIGHT = 2.0
# Caption targets equal to the pad id (0) are ignored, as nn.CrossEntropyLoss(ignore_index=0) does.
PAD_ID = 0


def clip_loss(image_features: jax.Array, text_features: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """Symmetric InfoNCE over the batch: mean of image→text and text→image cross-entropies.

    ``image_features`` / ``text_features`` are [B, E] (normally L2-normalised); ``logit_scale`` is the
    already exponentiated temperature, as the models return it. Pair i is the positive for row i.
    """
    img = image_features.astype(jnp.float32)
    txt = text_features.astype(jnp.float32)
    logits = jnp.asarray(logit_scale, jnp.float32) * img @ txt.T
    # The diagonal holds the positives; log_softmax along each axis gives both directions.
    image_to_text = -jnp.diagonal(jax.nn.log_softmax(logits, axis=1))
    text_to_image = -jnp.diagonal(jax.nn.log_softmax(logits, axis=0))
    return 0.5 * (image_to_text.mean() + text_to_image.mean())


def caption_loss(logits: jax.Array, labels: jax.Array, pad_id: int = PAD_ID) -> jax.Array:
    """Mean next-token cross-entropy over the targets that are not ``pad_id``.

    ``logits`` [B, T, V], ``labels`` int [B, T]. A batch with no real target gives 0, not NaN.
    Note that id 0 is also the BPE token '!', so real '!' targets are skipped, as in the reference.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target_log_probs = jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    keep = (labels != pad_id).astype(jnp.float32)
    return -(target_log_probs * keep).sum() / jnp.maximum(keep.sum(), 1.0)


def mammut_loss(
    out: dict,
    clip_weight: float = CLIP_LOSS_WEIGHT,
    caption_weight: float = CAPTION_LOSS_WEIGHT,
    pad_id: int = PAD_ID,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The MaMMUT objective ``clip_weight·InfoNCE + caption_weight·CaptionCE`` on a forward's output dict.

    Returns ``(total, parts)`` where ``parts`` holds the unweighted ``clip_loss`` and ``caption_loss``
    for logging. With ``clip_weight == 0`` (the "cap" runs) the contrastive term is not computed.
    """
    parts = {"caption_loss": caption_loss(out["logits"], out["labels"], pad_id)}
    total = caption_weight * parts["caption_loss"]
    if clip_weight:
        parts["clip_loss"] = clip_loss(out["image_features"], out["text_features"], out["logit_scale"])
        total = total + clip_weight * parts["clip_loss"]
    return total, parts


def model_loss(out: dict, **weights) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss for either family: MaMMUT when the output carries caption logits, else CLIP."""
    if "logits" in out:
        return mammut_loss(out, **weights)
    loss = clip_loss(out["image_features"], out["text_features"], out["logit_scale"])
    return loss, {"clip_loss": loss}
