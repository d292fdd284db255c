"""Parameter and FLOP accounting computed from the configurations (never measured).

``gflops`` follows the paper's convention (reference §7): forward FLOPs per sample at batch 1, 2 FLOPs per
multiply-add, conv and linear layers only (attention QK^T and AV products left out), both MaMMUT text passes with
both vocabulary heads and the ``map_viz2txt_kv`` projection. It equals the ``gflops`` column of the paper's
``model_profile.csv`` to 2 decimals for all 35 models, and ``param_counts`` equals its parameter columns exactly.

``training_flops`` is what a training step really costs, for MFU: it adds the attention products and multiplies
by 3 for the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlscale.models.config import PAPER_MODELS, ModelConfig, TextConfig, VisionConfig, get_config, list_models

FLOPS_PER_MAC = 2  # torch FlopCounterMode convention (reference §7)
BACKWARD_FACTOR = 3  # forward + backward ≈ 3x forward (backward = 2 matmuls per forward matmul)


# --- parameters ----------------------------------------------------------------------------------------------------


def _ln(w: int) -> int:
    return 2 * w


def _attn_params(w: int) -> int:
    return 4 * w * w + 4 * w  # packed in_proj [3w, w] + bias, out_proj [w, w] + bias


def _mlp_params(w: int, hidden: int) -> int:
    return 2 * w * hidden + hidden + w


def _block_params(w: int, hidden: int, has_mlp: bool = True, ls: bool = False, cross: bool = False) -> int:
    n = _ln(w) + _attn_params(w) + (w if ls else 0)  # ls_1.gamma
    if has_mlp:
        n += _ln(w) + _mlp_params(w, hidden) + (w if ls else 0)  # ls_2.gamma
    if cross:
        n += _ln(w)  # ln_1_kv
    return n


def vision_params(v: VisionConfig, embed_dim: int) -> int:
    w = v.width
    ls = v.ls_init_value is not None
    return (
        3 * v.patch_size**2 * w  # conv1, no bias
        + w  # class_embedding
        + v.num_tokens * w  # positional_embedding
        + _ln(w) * 2  # ln_pre, ln_post
        + v.layers * _block_params(w, v.mlp_width, ls=ls)
        + w * embed_dim  # proj
    )


def clip_text_params(t: TextConfig, embed_dim: int) -> int:
    w = t.width
    return (t.vocab_size * w + t.context_length * w + t.layers * _block_params(w, t.mlp_width) + _ln(w)
            + w * embed_dim)


def mammut_text_params(t: TextConfig) -> int:
    w = t.width
    self_blocks = sum(_block_params(w, t.mlp_width, has_mlp=t.self_block_has_mlp(i)) for i in range(t.layers))
    cross_blocks = t.num_cross_blocks * _block_params(w, t.mlp_width, cross=True)
    return (t.vocab_size * w + t.context_length * w + self_blocks + cross_blocks + _ln(w)
            + w * t.vocab_size)  # text_projection is the LM head [w, vocab]


def param_counts(name: str | ModelConfig) -> dict[str, int]:
    """Exact parameter counts: ``total``, ``image`` (visual.*), ``text`` (text tower / decoder).

    CLIP total = image + text + 1 (logit_scale); MaMMUT adds ``map_viz2txt_kv`` [vw, tw] (reference §1.5 notes).
    """
    cfg = get_config(name)
    image = vision_params(cfg.vision, cfg.embed_dim)
    if cfg.family == "clip":
        text = clip_text_params(cfg.text, cfg.embed_dim)
        extra = 1
    else:
        text = mammut_text_params(cfg.text)
        extra = 1 + cfg.vision.width * cfg.text.width
    return {"total": image + text + extra, "image": image, "text": text}


# --- FLOPs ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlopBreakdown:
    """Forward FLOPs per sample, split by tower; ``attention`` holds the QK^T and AV products (not in ``image``/
    ``text``)."""

    image: float
    text: float
    attention: float

    @property
    def paper(self) -> float:
        return self.image + self.text

    @property
    def full(self) -> float:
        return self.image + self.text + self.attention


def _block_macs(tokens: int, w: int, hidden: int, has_mlp: bool = True) -> int:
    return tokens * (4 * w * w + (2 * w * hidden if has_mlp else 0))


def _attention_macs(q_len: int, k_len: int, w: int) -> int:
    return 2 * q_len * k_len * w  # QK^T and AV, summed over heads


def forward_flops(name: str | ModelConfig, contrastive_lm_head: bool = True) -> FlopBreakdown:
    """Forward FLOPs per sample.

    ``contrastive_lm_head``: MaMMUT's reference computes (and discards) the vocabulary head in the contrastive
    pass; the paper's gflops count it. Pass False to count only work an implementation needs.
    """
    cfg = get_config(name)
    v, t = cfg.vision, cfg.text
    n_img = v.num_tokens
    image = (v.grid_size**2 * 3 * v.patch_size**2 * v.width
             + v.layers * _block_macs(n_img, v.width, v.mlp_width)
             + v.width * cfg.embed_dim)
    attention = v.layers * _attention_macs(n_img, n_img, v.width)
    w, ctx = t.width, t.context_length
    if cfg.family == "clip":
        text = t.layers * _block_macs(ctx, w, t.mlp_width) + w * cfg.embed_dim
        attention += t.layers * _attention_macs(ctx, ctx, w)
    else:
        cap = ctx - 1  # the captioning pass reads tokens[:, :-1]
        contrastive = sum(_block_macs(ctx, w, t.mlp_width, t.self_block_has_mlp(i)) for i in range(t.layers))
        contrastive += ctx * w * t.vocab_size if contrastive_lm_head else 0
        captioning = sum(_block_macs(cap, w, t.mlp_width, t.self_block_has_mlp(i)) for i in range(t.layers))
        cross = cap * 2 * w * w + n_img * 2 * w * w + cap * 2 * w * t.mlp_width  # q, out; k, v; MLP
        captioning += t.num_cross_blocks * cross + cap * w * t.vocab_size
        text = contrastive + captioning + n_img * v.width * w  # + map_viz2txt_kv
        attention += t.layers * (_attention_macs(ctx, ctx, w) + _attention_macs(cap, cap, w))
        attention += t.num_cross_blocks * _attention_macs(cap, n_img, w)
    return FlopBreakdown(image=FLOPS_PER_MAC * image, text=FLOPS_PER_MAC * text,
                         attention=FLOPS_PER_MAC * attention)


def gflops(name: str | ModelConfig) -> float:
    """The paper's per-sample forward GFLOPs (model_profile.csv convention), rounded to 2 decimals."""
    return round(forward_flops(name).paper / 1e9, 2)


def training_flops(name: str | ModelConfig, batch_size: int = 1, contrastive_lm_head: bool = False) -> float:
    """FLOPs of one training step on ``batch_size`` samples: forward including attention products, times 3.

    The contrastive-pass vocabulary head of MaMMUT is left out by default (its output is unused).
    """
    return BACKWARD_FACTOR * batch_size * forward_flops(name, contrastive_lm_head=contrastive_lm_head).full


def profile_table(names: list[str] | None = None, include_tiny: bool = False):
    """One row per model: model, family, image_size, mparams, image_mparams, text_mparams, gflops (paper
    convention), train_gflops (fwd+bwd incl. attention, per sample). Returns a pandas DataFrame."""
    import pandas as pd

    names = names or (list_models(include_tiny=True) if include_tiny else list(PAPER_MODELS))
    rows = []
    for n in names:
        cfg = get_config(n)
        counts = param_counts(cfg)
        rows.append({
            "model": n,
            "family": cfg.family,
            "image_size": cfg.image_size,
            "mparams": round(counts["total"] / 1e6, 2),
            "image_mparams": round(counts["image"] / 1e6, 2),
            "text_mparams": round(counts["text"] / 1e6, 2),
            "gflops": gflops(cfg),
            "train_gflops": round(training_flops(cfg) / 1e9, 2),
            "params": counts["total"],
        })
    return pd.DataFrame(rows)
