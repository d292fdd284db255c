"""CLIP parity with open_clip: random-weight open_clip models, converted, give the same embeddings and logits
(float32, highest matmul precision) within 1e-5, and the export loads back into open_clip bit-exactly."""

import jax
import numpy as np
import open_clip
import pytest
import torch

from vlscale.models import convert, registry
from vlscale.models.config import get_config, with_depth
from vlscale.models.tokenizer import Tokenizer

pytestmark = pytest.mark.parity

TOLERANCE = 1e-5  # max-abs on embeddings and logits, float32 (the bar)
CAPTIONS = [
    "A photo of a cat sitting on a red sofa.",
    "Deux chiens jouent &amp; courent dans l'herbe — 3 balls, 12 kids!!",
]


def perturb_(model, seed):
    """Makes every open_clip parameter informative: LayerNorm weights/biases, MHA biases, layer-scale gammas and
    logit_scale leave their constant inits (so a swapped or dropped tensor cannot go unnoticed)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(("bias", "gamma")) and not name.endswith("mlp.c_fc.bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
        model.logit_scale.fill_(2.9)
    return model


def open_clip_model(cfg):
    """open_clip's CLIP built from our config (the same JSON fields open_clip's model_configs hold)."""
    v, t = cfg.vision, cfg.text
    vision_cfg = dict(image_size=v.image_size, layers=v.layers, width=v.width, head_width=v.head_width,
                      patch_size=v.patch_size)
    if v.ls_init_value is not None:
        vision_cfg["ls_init_value"] = v.ls_init_value
    text_cfg = dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width, heads=t.heads,
                    layers=t.layers)
    return open_clip.model.CLIP(cfg.embed_dim, vision_cfg, text_cfg)


# name, config, built by open_clip.create_model (named JSON) or from our config, scan_layers
CASES = {
    "ViT-S-32": (get_config("ViT-S-32"), True, False),
    "ViT-B-32": (get_config("ViT-B-32"), True, True),
    "ViT-M-16-alt": (get_config("ViT-M-16-alt"), True, True),
    "ViT-H-14-short": (with_depth(get_config("ViT-H-14"), 2, 2, name="ViT-H-14-short"), False, False),
    "tiny-clip-ls": (get_config("tiny-clip-ls"), False, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_open_clip_parity_and_round_trip(case):
    cfg, named, scan = CASES[case]
    torch.manual_seed(0)
    tm = open_clip.create_model(case) if named else open_clip_model(cfg)
    tm = perturb_(tm.eval(), seed=1)
    tm.output_dict = True
    state = {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()}

    images = np.random.default_rng(0).normal(size=(2, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    tokens = Tokenizer()(CAPTIONS, context_length=cfg.context_length)
    with torch.no_grad():
        ref = tm(torch.from_numpy(images.transpose(0, 3, 1, 2)), torch.from_numpy(tokens).long())
        ref_img = tm.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    ref_logits = (ref["logit_scale"] * ref["image_features"] @ ref["text_features"].T).numpy()

    params = convert.torch_to_flax(state, cfg, scan_layers=scan)
    model = registry.build_model(cfg, scan_layers=scan)

    @jax.jit
    def forward(params, images, tokens):
        out = model.apply({"params": params}, images, tokens)
        raw = model.apply({"params": params}, images, method="encode_image")
        return out, raw, out["logit_scale"] * out["image_features"] @ out["text_features"].T

    with jax.default_matmul_precision("highest"):
        out, raw_img, logits = forward(params, images, tokens)
    assert np.abs(raw_img - ref_img).max() < TOLERANCE
    assert np.abs(out["image_features"] - ref["image_features"].numpy()).max() < TOLERANCE
    assert np.abs(out["text_features"] - ref["text_features"].numpy()).max() < TOLERANCE
    assert np.abs(logits - ref_logits).max() < TOLERANCE
    assert float(out["logit_scale"]) == pytest.approx(np.exp(2.9), rel=1e-6)

    exported = convert.flax_to_torch(params)
    assert exported.keys() == state.keys()
    for k, v in state.items():
        assert exported[k].shape == v.shape and np.array_equal(exported[k], v), k
    missing, unexpected = tm.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    assert not missing and not unexpected
