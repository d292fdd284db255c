"""Training objectives of the paper's runs: CLIP InfoNCE and MaMMUT's contrastive + captioning sum.

All losses are pure functions of model outputs, computed in float32 whatever the compute dtype, so a
bf16 forward still gets an fp32 log-softmax. The contrastive loss works on the *global* batch: under
``jit`` with batch-sharded features, XLA inserts the all-gathers that open_clip's
``--local-loss --gather-with-grad`` performs by hand, and the gradient is the same (reference §1.4).

``clip_loss`` lets XLA place the [B, B] logits; for very large global batches (the paper reaches 180k, where
B² float32 logits are 130 GB) ``clip_loss_sharded`` computes the same loss with ``jax.shard_map`` so that each
device only ever holds its [B/n, B] block.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from vlscale.models.layers import EMBED, VOCAB
from vlscale.runtime import sharding

# open_clip CoCaLoss defaults, unchanged by the paper's training command (reference §2.5).
CLIP_LOSS_WEIGHT = 1.0
CAPTION_LOSS_WEIGHT = 2.0
# Caption targets equal to the pad id (0) are ignored, as nn.CrossEntropyLoss(ignore_index=0) does.
PAD_ID = 0
# Caption positions per step of the chunked LM head + cross-entropy: [B, chunk, V] float32 logits at a time.
CAPTION_CHUNK = 8
# Vocabulary blocks of the LM head's gradient accumulation per chunk (_add_head_grad): tiny-mammut's step on 8 fake
# devices, fsdp=8, peaks at 86.1 MB per device with 1 block, 82.8 MB with 8.
HEAD_GRAD_BLOCKS = 8
# The mesh axes the batch is split over (train/sharding.py LOGICAL_RULES, "batch").
BATCH_AXES = ("data", "fsdp")


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


def clip_loss_sharded(image_features: jax.Array, text_features: jax.Array, logit_scale: jax.Array, mesh: Mesh,
                      batch_axes: Sequence[str] = BATCH_AXES) -> jax.Array:
    """``clip_loss`` over the global batch without the [B, B] logits on any one device.

    Use it instead of ``clip_loss`` when the global batch is so large that B² float32 logits (plus their exp and
    gradient) do not fit on a device, e.g. B ≥ 32k; below that the plain loss is as fast and simpler. The result
    (value and gradients w.r.t. both features and ``logit_scale``) equals ``clip_loss`` up to float32 rounding.

    Inside ``jax.shard_map`` over ``batch_axes`` (those of them that ``mesh`` has) each of the n devices holds
    b = B/n image and text rows. It all-gathers the text features ([B, E], small), computes its [b, B] block
    ``scale · img_local @ all_txtᵀ``, and gets
      * image→text from the row log-sum-exp of its own block;
      * text→image from the column log-sum-exp across devices: per-device column maxima (pmax) and sums of
        exponentials (psum) are [B] vectors, so the exchange is O(B), not O(B²).
    Memory per device is O(b·B); communication is one all-gather of features plus two [B] all-reduces (and
    their transposes in the backward pass). B must be divisible by n.
    """
    axes = tuple(a for a in batch_axes if a in mesh.axis_names and mesh.shape[a] > 1)
    if not axes:
        return clip_loss(image_features, text_features, logit_scale)
    n = math.prod(mesh.shape[a] for a in axes)
    batch = image_features.shape[0]
    if batch % n or text_features.shape[0] != batch:
        raise ValueError(f"global batch {batch} (text {text_features.shape[0]}) must be equal and divisible by "
                         f"the {n} devices of mesh axes {axes}")
    rows = PartitionSpec(axes, None)

    def local(img, txt, scale):
        img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
        b = img.shape[0]
        all_txt = jax.lax.all_gather(txt, axes, axis=0, tiled=True)  # [B, E], ordered like the sharded batch
        logits = jnp.asarray(scale, jnp.float32) * img @ all_txt.T  # [b, B]
        offset = jax.lax.axis_index(axes) * b  # my rows' global index = the column of their positives
        positives = jnp.diagonal(jax.lax.dynamic_slice_in_dim(logits, offset, b, axis=1))
        row_lse = jax.nn.logsumexp(logits, axis=1)
        # The max only keeps exp() in range; the log-sum-exp is independent of it, so it carries no gradient.
        col_max = jax.lax.stop_gradient(jax.lax.pmax(jax.lax.stop_gradient(logits.max(axis=0)), axes))
        col_lse = col_max + jnp.log(jax.lax.psum(jnp.exp(logits - col_max).sum(axis=0), axes))  # [B]
        my_col_lse = jax.lax.dynamic_slice_in_dim(col_lse, offset, b)
        total = (row_lse - positives).sum() + (my_col_lse - positives).sum()
        return jax.lax.psum(total, axes) / (2 * batch)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(rows, rows, PartitionSpec()), out_specs=PartitionSpec())
    return fn(image_features, text_features, jnp.asarray(logit_scale, jnp.float32))


def caption_loss(logits: jax.Array, labels: jax.Array, pad_id: int = PAD_ID) -> jax.Array:
    """Mean next-token cross-entropy over the targets that are not ``pad_id``.

    ``logits`` [B, T, V], ``labels`` int [B, T]. A batch with no real target gives 0, not NaN.
    Note that id 0 is also the BPE token '!', so real '!' targets are skipped, as in the reference.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target_log_probs = jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    keep = (labels != pad_id).astype(jnp.float32)
    return -(target_log_probs * keep).sum() / jnp.maximum(keep.sum(), 1.0)


def caption_nll_from_hidden(hidden: jax.Array, lm_head: jax.Array, labels: jax.Array, *,
                            chunk: int = CAPTION_CHUNK, pad_id: int = PAD_ID,
                            mesh: Mesh | None = None) -> tuple[jax.Array, jax.Array]:
    """(sum of next-token NLLs over non-pad targets, their count) from decoder hidden states, in chunks.

    ``hidden`` [B, T, w] (the decoder's ``ln_final`` output, any compute dtype), ``lm_head`` [w, V], ``labels``
    int [B, T]. Equals ``caption_loss(hidden @ lm_head, labels) * count`` (value and gradients) but applies the head
    ``chunk`` positions at a time: no pass holds more than [b, chunk, V] float32 logits (the plain path keeps
    [B, T, V] plus float32 copies, 3.8 GB each for mammut_ViT-B-32 at batch 256).

    The forward computes the gradients too (a ``custom_vjp``): each chunk's logits are made once, not again in
    the backward, and the head gradient accumulates in the loop's carry. With ``mesh``, the loop runs inside
    ``jax.shard_map`` over the batch axes, so it holds no collective: the head is gathered once before it (from
    its parameter sharding, in the compute dtype) and its float32 gradient reduced once after it (a
    reduce-scatter back to that sharding under FSDP, an all-reduce under pure data parallelism).
    """
    labels = labels.astype(jnp.int32)
    count = (labels != pad_id).sum().astype(jnp.float32)
    return _caption_nll(hidden, lm_head, labels, chunk, pad_id, mesh), count


def _chunk_nll(h: jax.Array, head: jax.Array, y: jax.Array, pad_id: int, with_grads: bool):
    """One chunk: (NLL sum, d/dh, d/dlogits) of ``h`` [b, c, w] with ``head`` [w, V] and labels ``y``."""
    logits = jnp.einsum("bcw,wv->bcv", h, head, preferred_element_type=jnp.float32)
    keep = y != pad_id
    lse = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
    nll = jnp.sum(jnp.where(keep, lse - target, 0.0))
    if not with_grads:
        return nll, None, None
    # d(lse - target)/dlogits = softmax - onehot(target), zero where the target is padding.
    vocab = jnp.arange(logits.shape[-1], dtype=y.dtype)
    dlogits = jnp.exp(logits - lse[..., None]) - (vocab == y[..., None])
    dlogits = jnp.where(keep[..., None], dlogits, 0.0).astype(h.dtype)
    dh = jnp.einsum("bcv,wv->bcw", dlogits, head, preferred_element_type=jnp.float32).astype(h.dtype)
    return nll, dh, dlogits


def _add_head_grad(acc: jax.Array, h: jax.Array, dlogits: jax.Array) -> jax.Array:
    """``acc + hᵀ·dlogits`` [w, V] float32, one vocabulary block at a time, updated in place (a whole-vocabulary
    product would need a second [w, V] buffer beside the accumulator)."""
    vocab = acc.shape[1]
    blocks = next(k for k in (HEAD_GRAD_BLOCKS, 4, 2, 1) if vocab % k == 0)
    size = vocab // blocks

    def block(j, acc):
        part = jnp.einsum("bcw,bcv->wv", h, jax.lax.dynamic_slice_in_dim(dlogits, j * size, size, axis=2),
                          preferred_element_type=jnp.float32)
        return jax.lax.dynamic_update_slice_in_dim(
            acc, jax.lax.dynamic_slice_in_dim(acc, j * size, size, axis=1) + part, j * size, axis=1)

    return jax.lax.fori_loop(0, blocks, block, acc)


def _local_caption_nll(hidden, head, labels, chunk: int, pad_id: int, with_grads: bool):
    """(NLL sum, d/dhidden, d/dhead float32) over the rows given, in a ``lax.scan`` over position chunks."""
    b, t, w = hidden.shape
    n = -(-t // chunk)
    if n * chunk != t:
        hidden = jnp.pad(hidden, ((0, 0), (0, n * chunk - t), (0, 0)))
        labels = jnp.pad(labels, ((0, 0), (0, n * chunk - t)), constant_values=pad_id)
    # Position-major chunks [n, b, chunk, ...]: each step sees all rows at a few positions.
    hs = jnp.swapaxes(hidden.reshape(b, n, chunk, w), 0, 1)
    ys = jnp.swapaxes(labels.reshape(b, n, chunk), 0, 1)
    head = head.astype(hidden.dtype)

    def body(carry, xs):
        (total, dhead), (h, y) = carry, xs
        nll, dh, dlogits = _chunk_nll(h, head, y, pad_id, with_grads)
        if with_grads:
            dhead = _add_head_grad(dhead, h, dlogits)
        return (total + nll, dhead), dh

    init = (jnp.float32(0.0), jnp.zeros(head.shape, jnp.float32) if with_grads else None)
    (total, dhead), dhs = jax.lax.scan(body, init, (hs, ys))
    if not with_grads:
        return total, None, None
    return total, jnp.swapaxes(dhs, 0, 1).reshape(b, n * chunk, w)[:, :t], dhead


def _reduce_head_grad(g: jax.Array, spec: PartitionSpec, batch_axes: tuple[str, ...], mesh: Mesh) -> jax.Array:
    """Inside shard_map: this device's head-gradient partial sum [w, V] -> its block of the reduced gradient."""
    done: set[str] = set()
    for dim, axes in enumerate(spec):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        if not names:
            continue
        if all(a in batch_axes for a in names):
            g = jax.lax.psum_scatter(g, names, scatter_dimension=dim, tiled=True)
        else:  # split over a model axis (tensor): the rows there are the same, take this device's block
            summed = tuple(a for a in names if a in batch_axes)
            if summed:
                g = jax.lax.psum(g, summed)
            size = g.shape[dim] // math.prod(mesh.shape[a] for a in names)
            g = jax.lax.dynamic_slice_in_dim(g, jax.lax.axis_index(names) * size, size, axis=dim)
        done.update(names)
    rest = tuple(a for a in batch_axes if a not in done)
    return jax.lax.psum(g, rest) if rest else g


def _split_axes(spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    """``spec`` without the mesh axes of size 1 (a collective over one of them is still a copy of the whole head)."""
    names = [(axes,) if isinstance(axes, str) else tuple(axes or ()) for axes in spec]
    kept = [tuple(a for a in axes if mesh.shape[a] > 1) for axes in names]
    return PartitionSpec(*[k[0] if len(k) == 1 else (k or None) for k in kept])


def _sharded_caption_nll(hidden, head, labels, chunk: int, pad_id: int, mesh: Mesh | None, with_grads: bool):
    """``_local_caption_nll`` over the global batch: in ``shard_map`` over the batch axes when ``mesh`` splits it."""
    axes = () if mesh is None else tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
    n = math.prod(mesh.shape[a] for a in axes) if axes else 1
    spec = PartitionSpec() if mesh is None else _split_axes(
        sharding.logical_to_mesh_spec((EMBED, VOCAB), shape=head.shape, mesh=mesh), mesh)
    if mesh is None or hidden.shape[0] % n or (not axes and not any(spec)):
        total, dh, dhead = _local_caption_nll(hidden, head, labels, chunk, pad_id, with_grads)
        return total, dh, dhead
    rows = PartitionSpec(axes)

    def local(h, head_block, y):
        head_block = head_block.astype(h.dtype)  # gather in the compute dtype
        for dim, block_axes in enumerate(spec):
            if block_axes:
                head_block = jax.lax.all_gather(head_block, block_axes, axis=dim, tiled=True)
        total, dh, dhead = _local_caption_nll(h, head_block, y, chunk, pad_id, with_grads)
        total = jax.lax.psum(total, axes) if axes else total
        if not with_grads:
            return total
        return total, dh, _reduce_head_grad(dhead, spec, axes, mesh)

    out_specs = (PartitionSpec(), rows, spec) if with_grads else PartitionSpec()
    # Every value leaving is reduced or split explicitly above; the replication check cannot follow all_gather.
    fn = jax.shard_map(local, mesh=mesh, in_specs=(rows, spec, rows), out_specs=out_specs, check_vma=False)
    out = fn(hidden, head, labels)
    return (out, None, None) if not with_grads else out


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _caption_nll(hidden, head, labels, chunk, pad_id, mesh):
    return _sharded_caption_nll(hidden, head, labels, chunk, pad_id, mesh, with_grads=False)[0]


def _caption_nll_fwd(hidden, head, labels, chunk, pad_id, mesh):
    # The gradients come out of the same loop and the backward only scales them: one head product per chunk fewer
    # than recomputing the logits in the backward, at the same peak memory (both measured, bench/compiled_budget.py).
    total, dhidden, dhead = _sharded_caption_nll(hidden, head, labels, chunk, pad_id, mesh, with_grads=True)
    return total, (dhidden, dhead.astype(head.dtype))


def _caption_nll_bwd(chunk, pad_id, mesh, residuals, g):
    dhidden, dhead = residuals
    return (g * dhidden).astype(dhidden.dtype), (g * dhead).astype(dhead.dtype), None


_caption_nll.defvjp(_caption_nll_fwd, _caption_nll_bwd)


def caption_loss_from_hidden(hidden: jax.Array, lm_head: jax.Array, labels: jax.Array, *,
                             chunk: int = CAPTION_CHUNK, pad_id: int = PAD_ID, mesh: Mesh | None = None) -> jax.Array:
    """``caption_loss`` of ``hidden @ lm_head`` without materialising the logits (``caption_nll_from_hidden``).

    Use it with ``MaMMUT(...)(images, tokens, caption_head=False)``, whose output carries ``caption_hidden`` and
    ``lm_head``. A batch with no real target gives 0.
    """
    total, count = caption_nll_from_hidden(hidden, lm_head, labels, chunk=chunk, pad_id=pad_id, mesh=mesh)
    return total / jnp.maximum(count, 1.0)


def _caption(out: dict, pad_id: int, chunk: int, mesh: Mesh | None) -> jax.Array:
    if "logits" in out:
        return caption_loss(out["logits"], out["labels"], pad_id)
    return caption_loss_from_hidden(out["caption_hidden"], out["lm_head"], out["labels"], chunk=chunk, pad_id=pad_id,
                                    mesh=mesh)


def _contrastive(out: dict, mesh: Mesh | None) -> jax.Array:
    if mesh is None:
        return clip_loss(out["image_features"], out["text_features"], out["logit_scale"])
    return clip_loss_sharded(out["image_features"], out["text_features"], out["logit_scale"], mesh)


def mammut_loss(
    out: dict,
    clip_weight: float = CLIP_LOSS_WEIGHT,
    caption_weight: float = CAPTION_LOSS_WEIGHT,
    pad_id: int = PAD_ID,
    *,
    mesh: Mesh | None = None,
    caption_chunk: int = CAPTION_CHUNK,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The MaMMUT objective ``clip_weight·InfoNCE + caption_weight·CaptionCE`` on a forward's output dict.

    Returns ``(total, parts)`` where ``parts`` holds the unweighted ``clip_loss`` and ``caption_loss``
    for logging. With ``clip_weight == 0`` (the "cap" runs) the contrastive term is not computed.
    The caption term uses ``logits`` when the forward returned them, else the chunked head on ``caption_hidden``
    (``caption_head=False``; ``caption_chunk`` positions per step).
    ``mesh``: compute the contrastive term with ``clip_loss_sharded`` and the chunked caption head inside
    ``shard_map`` on that mesh.
    """
    parts = {"caption_loss": _caption(out, pad_id, caption_chunk, mesh)}
    total = caption_weight * parts["caption_loss"]
    if clip_weight:
        parts["clip_loss"] = _contrastive(out, mesh)
        total = total + clip_weight * parts["clip_loss"]
    return total, parts


def model_loss(out: dict, family: Literal["clip", "mammut"], *, mesh: Mesh | None = None,
               **weights) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss of a model family (``ModelConfig.family``) on its forward's output dict.

    ``weights`` (``clip_weight``, ``caption_weight``, ``pad_id``, ``caption_chunk``) apply to MaMMUT only; CLIP's loss is the plain
    InfoNCE as open_clip's ``ClipLoss`` (so a trainer can pass its configured weights for either family).
    ``mesh``: use the sharded contrastive loss (``clip_loss_sharded``) for very large global batches.
    """
    if family == "mammut":
        return mammut_loss(out, mesh=mesh, **weights)
    if family != "clip":
        raise ValueError(f"unknown model family {family!r}; expected 'clip' or 'mammut'")
    loss = _contrastive(out, mesh)
    return loss, {"clip_loss": loss}
