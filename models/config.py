"""Model configurations: the 35 CLIP/MaMMUT models of the paper plus tiny ones for tests and CPU studies.

Every number in the named configs comes from open_clip / open_clip_mammut's model_configs JSON, as tabulated in
reference-models.md §1.5; the parameter and FLOP tests against ``model_profile.csv`` check them.
Runtime choices that do not change the parameters (compute dtype, rematerialisation, scan over layers) live in
``RuntimeOptions`` so one checkpoint serves every runtime.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, replace
from typing import Literal

from vlscale.errors import UserError

# open_clip defaults (reference §1, §5): BPE vocabulary, context, MLP ratio, ViT head width.
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
MLP_RATIO = 4.0
DEFAULT_HEAD_WIDTH = 64
# logit_scale initial value ln(1/0.07) (open_clip model.py L256-257).
INIT_LOGIT_SCALE = math.log(1 / 0.07)

Family = Literal["clip", "mammut"]


@dataclass(frozen=True)
class VisionConfig:
    """open_clip ``VisionTransformer`` settings. Heads = width // head_width."""

    width: int
    layers: int
    patch_size: int
    image_size: int = 224
    head_width: int = DEFAULT_HEAD_WIDTH
    mlp_ratio: float = MLP_RATIO
    ls_init_value: float | None = None
    # "tok": ln_post over all tokens, then the class token (CLIP). "avg_all": mean over all tokens (MaMMUT).
    pool_type: Literal["tok", "avg_all"] = "tok"
    final_ln_after_pool: bool = False

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Patches plus the class token."""
        return self.grid_size**2 + 1

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)


@dataclass(frozen=True)
class TextConfig:
    """Text tower (CLIP) or text decoder (MaMMUT) settings."""

    width: int
    heads: int
    layers: int
    context_length: int = CONTEXT_LENGTH
    vocab_size: int = VOCAB_SIZE
    mlp_ratio: float = MLP_RATIO
    # MaMMUT only: even self-attention blocks have an MLP iff has_mlp; one cross block per cross_attn_ratio blocks.
    has_mlp: bool = True
    cross_attn_ratio: int = 2

    @property
    def head_width(self) -> int:
        return self.width // self.heads

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)

    def self_block_has_mlp(self, i: int) -> bool:
        """MaMMUT's rule (transformer.py MultimodalTransformer): block i has an MLP iff i is odd or has_mlp."""
        return (i % 2 != 0) or self.has_mlp

    @property
    def num_cross_blocks(self) -> int:
        return self.layers // self.cross_attn_ratio


@dataclass(frozen=True)
class ModelConfig:
    """A whole model: a name, a family and both towers.

    For MaMMUT, ``embed_dim`` equals the text width (no contrastive text projection) and ``text_projection`` is the
    LM head [text width, vocab].
    """

    name: str
    family: Family
    embed_dim: int
    vision: VisionConfig
    text: TextConfig
    init_logit_scale: float = INIT_LOGIT_SCALE

    @property
    def image_size(self) -> int:
        return self.vision.image_size

    @property
    def context_length(self) -> int:
        return self.text.context_length


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run a model, independent of its parameters' values.

    dtype: compute dtype ("float32" or "bfloat16").
    param_dtype: storage dtype of the parameters. "float32" (default) keeps fp32 master weights under bf16
        compute, like torch AMP; "bfloat16" halves parameter memory (pure-bf16 training, open_clip's
        ``--precision bf16``). ``logit_scale`` stays float32 either way: its clamp at ln 100 needs the precision.
    remat: "none"; "block" recomputes each block in the backward pass but keeps its matmul outputs;
        "full" keeps nothing inside a block (least memory).
    scan_layers: run each homogeneous block stack with ``nn.scan`` (parameters stacked on a leading "layers" axis)
        so deep models such as ViT-H compile faster (H100: 32 s instead of 83 s for a ViT-H-14 train step).
    attention: "xla" (default) is the explicit einsum softmax, the path the parity tests check; "dot_product"
        calls ``jax.nn.dot_product_attention`` (JAX picks the kernel); "cudnn" forces its fused cuDNN kernel
        (GPU with bf16 compute only), "pallas" JAX's Pallas flash attention (TPU), both on padded lengths;
        "auto" picks per platform (``vlscale.models.attention.resolve_attention``).
    """

    dtype: Literal["float32", "bfloat16"] = "float32"
    remat: Literal["none", "block", "full"] = "none"
    scan_layers: bool = False
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    attention: Literal["xla", "dot_product", "cudnn", "pallas", "auto"] = "xla"

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16"):
            raise UserError(f"dtype {self.dtype!r} is not supported; use 'float32' or 'bfloat16'")
        if self.param_dtype not in ("float32", "bfloat16"):
            raise UserError(f"param_dtype {self.param_dtype!r} is not supported; use 'float32' or 'bfloat16'")
        if self.remat not in ("none", "block", "full"):
            raise UserError(f"remat {self.remat!r} is not supported; use 'none', 'block' or 'full'")
        if self.attention not in ("xla", "dot_product", "cudnn", "pallas", "auto"):
            raise UserError(f"attention {self.attention!r} is not supported; "
                            "use 'xla', 'dot_product', 'cudnn', 'pallas' or 'auto'")


# --- the paper's models (reference §1.5) -------------------------------------------------------------------------
# name: (embed_dim, vision width, vision layers, patch, text width, text layers, text heads, extra)
_CLIP_TABLE: dict[str, tuple] = {
    "ViT-S-32-alt": (256, 384, 12, 32, 256, 10, 4, {}),
    "ViT-S-32": (384, 384, 12, 32, 384, 12, 6, {}),
    "ViT-S-16-alt": (256, 384, 12, 16, 256, 10, 4, {}),
    "ViT-M-32": (512, 512, 12, 32, 512, 12, 8, {}),
    "ViT-S-16": (384, 384, 12, 16, 384, 12, 6, {}),
    "ViT-S-14": (384, 384, 12, 14, 384, 12, 6, {}),
    "ViT-B-32": (512, 768, 12, 32, 512, 12, 8, {}),
    "ViT-M-16": (512, 512, 12, 16, 512, 12, 8, {}),
    "ViT-M-14": (512, 512, 12, 14, 512, 12, 8, {}),
    "ViT-B-16": (512, 768, 12, 16, 512, 12, 8, {}),
    "ViT-L-32": (768, 1024, 24, 32, 768, 12, 12, {}),
    "ViT-B-16-text-plus": (768, 768, 12, 16, 768, 12, 12, {}),
    "ViT-B-14": (512, 768, 12, 14, 512, 12, 8, {}),
    "ViT-H-32": (1024, 1280, 32, 32, 1024, 24, 16, {"head_width": 80}),
    "ViT-L-16": (768, 1024, 24, 16, 768, 12, 12, {}),
    "ViT-L-14": (768, 1024, 24, 14, 768, 12, 12, {}),
    "ViT-H-16": (1024, 1280, 32, 16, 1024, 24, 16, {"head_width": 80}),
    "ViT-H-14": (1024, 1280, 32, 14, 1024, 24, 16, {"head_width": 80}),
    "ViT-M-16-alt": (384, 512, 12, 16, 384, 12, 6, {"ls_init_value": 1e-4}),
    "ViT-M-32-alt": (384, 512, 12, 32, 384, 12, 6, {}),
}

# mammut_<base>: vision as the CLIP base; text width = embed_dim; has_mlp per the fork's JSON (absent = True).
_MAMMUT_TABLE: dict[str, tuple] = {
    "mammut_ViT-S-32": (384, 384, 12, 32, 384, 12, 6, False, {}),
    "mammut_ViT-S-16": (384, 384, 12, 16, 384, 12, 6, False, {}),
    "mammut_ViT-M-32": (512, 512, 12, 32, 512, 12, 8, False, {}),
    "mammut_ViT-S-14": (384, 384, 12, 14, 384, 12, 6, False, {}),
    "mammut_ViT-B-32": (512, 768, 12, 32, 512, 12, 8, False, {}),
    "mammut_ViT-M-16": (512, 512, 12, 16, 512, 12, 8, False, {}),
    "mammut_ViT-M-14": (512, 512, 12, 14, 512, 12, 8, False, {}),
    "mammut_ViT-B-14": (512, 768, 12, 14, 512, 12, 8, False, {}),
    "mammut_ViT-L-32": (768, 1024, 24, 32, 768, 12, 12, True, {}),
    "mammut_ViT-B-16": (768, 768, 12, 16, 768, 12, 12, True, {}),
    "mammut_ViT-L-16": (768, 1024, 24, 16, 768, 12, 12, True, {}),
    "mammut_ViT-H-32": (1024, 1280, 32, 32, 1024, 24, 16, True, {"head_width": 80}),
    "mammut_ViT-L-14": (768, 1024, 24, 14, 768, 12, 12, True, {}),
    "mammut_ViT-H-16": (1024, 1280, 32, 16, 1024, 24, 16, True, {"head_width": 80}),
    "mammut_ViT-H-14": (1024, 1280, 32, 14, 1024, 24, 16, True, {"head_width": 80}),
}


def _clip(name, embed, vw, vl, patch, tw, tl, th, extra, image_size=224, context_length=CONTEXT_LENGTH):
    return ModelConfig(
        name=name,
        family="clip",
        embed_dim=embed,
        vision=VisionConfig(width=vw, layers=vl, patch_size=patch, image_size=image_size, **extra),
        text=TextConfig(width=tw, heads=th, layers=tl, context_length=context_length),
    )


def _mammut(name, embed, vw, vl, patch, tw, tl, th, has_mlp, extra, image_size=224, context_length=CONTEXT_LENGTH):
    return ModelConfig(
        name=name,
        family="mammut",
        embed_dim=embed,
        vision=VisionConfig(
            width=vw,
            layers=vl,
            patch_size=patch,
            image_size=image_size,
            pool_type="avg_all",
            final_ln_after_pool=True,
            **extra,
        ),
        text=TextConfig(width=tw, heads=th, layers=tl, context_length=context_length, has_mlp=has_mlp),
    )


def _tiny_configs() -> dict[str, ModelConfig]:
    """Small models that take the same code paths (class token, layer scale, has_mlp, cross blocks) on a CPU.

    The vocabulary stays 49408 so the real tokenizer works; image 32-64 px, widths 64-256, context 16-32.
    """
    tiny = {
        # image 32, patch 8 -> 17 tokens; head width 32 -> 2 heads.
        "tiny-clip": _clip("tiny-clip", 64, 64, 2, 8, 64, 2, 2, {"head_width": 32}, image_size=32, context_length=16),
        "tiny-clip-ls": _clip(
            "tiny-clip-ls", 48, 64, 2, 8, 64, 2, 2, {"head_width": 32, "ls_init_value": 1e-4},
            image_size=32, context_length=16,
        ),
        "tiny-mammut": _mammut(
            "tiny-mammut", 64, 64, 2, 8, 64, 4, 2, False, {"head_width": 32}, image_size=32, context_length=16
        ),
        "tiny-mammut-mlp": _mammut(
            "tiny-mammut-mlp", 64, 64, 2, 8, 64, 4, 2, True, {"head_width": 32}, image_size=32, context_length=16
        ),
        # CPU studies: 64 px, patch 8 -> 65 tokens.
        "small-clip": _clip("small-clip", 256, 256, 4, 8, 256, 4, 4, {}, image_size=64, context_length=32),
        "small-mammut": _mammut(
            "small-mammut", 256, 256, 4, 8, 256, 4, 4, False, {}, image_size=64, context_length=32
        ),
    }
    tiny.update(_shapes_configs())
    return tiny


# CPU scaling studies on the synthetic shapes data: (suffix, width, CLIP layers, heads). Head width is 32 throughout.
_SHAPES_SIZES = (("XS", 32, 1, 1), ("S", 64, 2, 2), ("M", 128, 3, 4), ("L", 256, 4, 8))


def _shapes_configs() -> dict[str, ModelConfig]:
    """``shapes-clip-*`` / ``shapes-mammut-*``: 32 px, patch 8, context 16; text and vision share width/heads.

    MaMMUT gets twice the CLIP text layers so every size has cross-attention blocks (one per two text layers), and
    its embed_dim is the text width as in every MaMMUT config.
    """
    out: dict[str, ModelConfig] = {}
    for suffix, width, layers, heads in _SHAPES_SIZES:
        name = f"shapes-clip-{suffix}"
        out[name] = _clip(name, width, width, layers, 8, width, layers, heads, {"head_width": width // heads},
                          image_size=32, context_length=16)
    for suffix, width, layers, heads in _SHAPES_SIZES:
        extra = {"head_width": width // heads}
        name = f"shapes-mammut-{suffix}"
        out[name] = _mammut(name, width, width, layers, 8, width, 2 * layers, heads, False, extra, image_size=32,
                            context_length=16)
    return out


def _build_registry() -> dict[str, ModelConfig]:
    reg: dict[str, ModelConfig] = {}
    for name, row in _CLIP_TABLE.items():
        reg[name] = _clip(name, *row)
    for name, row in _MAMMUT_TABLE.items():
        reg[name] = _mammut(name, *row)
    reg.update(_tiny_configs())
    return reg


_REGISTRY = _build_registry()
PAPER_MODELS: tuple[str, ...] = tuple(list(_CLIP_TABLE) + list(_MAMMUT_TABLE))


def list_models(include_tiny: bool = True) -> list[str]:
    """All configuration names: the paper's 35 (in model_profile.csv order) then the tiny ones."""
    return [n for n in _REGISTRY if include_tiny or n in PAPER_MODELS]


def get_config(name: str | ModelConfig, **overrides) -> ModelConfig:
    """The configuration for ``name``; keyword overrides replace top-level fields (e.g. ``embed_dim``)."""
    if isinstance(name, ModelConfig):
        cfg = name
    else:
        if name not in _REGISTRY:
            close = difflib.get_close_matches(name, list(_REGISTRY), n=4, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(
                f"unknown model {name!r}{hint} (run `vlscale models` for all {len(_REGISTRY)} names)"
            )
        cfg = _REGISTRY[name]
    return replace(cfg, **overrides) if overrides else cfg


def with_depth(cfg: ModelConfig, vision_layers: int | None = None, text_layers: int | None = None,
               name: str | None = None) -> ModelConfig:
    """A copy with fewer (or more) layers: e.g. a ViT-H-14-like model of reduced depth for parity tests."""
    vision = replace(cfg.vision, layers=vision_layers) if vision_layers else cfg.vision
    text = replace(cfg.text, layers=text_layers) if text_layers else cfg.text
    return replace(cfg, vision=vision, text=text, name=name or cfg.name)


__all__ = [
    "VOCAB_SIZE",
    "CONTEXT_LENGTH",
    "INIT_LOGIT_SCALE",
    "VisionConfig",
    "TextConfig",
    "ModelConfig",
    "RuntimeOptions",
    "PAPER_MODELS",
    "get_config",
    "list_models",
    "with_depth",
]
