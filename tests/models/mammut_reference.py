"""An independent float64 numpy MaMMUT, written from the reference notes (§2) on open_clip state-dict keys.

It shares no code with vlscale.models: it reads a torch-layout state dict (key -> np.ndarray, packed
``in_proj_weight`` q|k|v, ``[out, in]`` Linear weights, NCHW conv), so a test that feeds it the
converted Flax parameters checks both the Flax maths and the parameter layout at once.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

LN_EPS = 1e-5


def layer_norm(x, sd, prefix):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LN_EPS) * sd[prefix + ".weight"] + sd[prefix + ".bias"]


def multi_head_attention(q_in, kv_in, sd, prefix, heads, causal):
    """torch.nn.MultiheadAttention(batch_first=True) with an optional causal (-inf above diagonal) mask."""
    w_in, b_in = sd[prefix + ".in_proj_weight"], sd[prefix + ".in_proj_bias"]
    width = w_in.shape[1]
    hd = width // heads

    def project(x, k):
        y = x @ w_in[k * width : (k + 1) * width].T + b_in[k * width : (k + 1) * width]
        return y.reshape(*y.shape[:-1], heads, hd).swapaxes(-2, -3)  # [B, H, L, hd]

    q, k, v = project(q_in, 0), project(kv_in, 1), project(kv_in, 2)
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(hd)
    if causal:
        n = scores.shape[-1]
        scores = scores + np.triu(np.full((n, n), -np.inf), 1)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    probs = scores / scores.sum(-1, keepdims=True)
    out = (probs @ v).swapaxes(-2, -3)
    out = out.reshape(*out.shape[:-2], width)
    return out @ sd[prefix + ".out_proj.weight"].T + sd[prefix + ".out_proj.bias"]


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def residual_block(x, sd, prefix, heads, causal=False, kv=None):
    """Pre-LN block; ``kv`` given makes it a cross-attention block with its own ln_1_kv."""
    gamma1 = sd.get(prefix + ".ls_1.gamma", 1.0)
    gamma2 = sd.get(prefix + ".ls_2.gamma", 1.0)
    h = layer_norm(x, sd, prefix + ".ln_1")
    kv_h = h if kv is None else layer_norm(kv, sd, prefix + ".ln_1_kv")
    x = x + gamma1 * multi_head_attention(h, kv_h, sd, prefix + ".attn", heads, causal)
    if prefix + ".mlp.c_fc.weight" in sd:
        h = layer_norm(x, sd, prefix + ".ln_2")
        h = gelu(h @ sd[prefix + ".mlp.c_fc.weight"].T + sd[prefix + ".mlp.c_fc.bias"])
        x = x + gamma2 * (h @ sd[prefix + ".mlp.c_proj.weight"].T + sd[prefix + ".mlp.c_proj.bias"])
    return x


def vision_tokens(sd, images, heads):
    """ViT tokens after the last block (no ln_post), images NHWC."""
    conv = sd["visual.conv1.weight"]  # [w, 3, p, p]
    width, _, p, _ = conv.shape
    b, hgt, wid, c = images.shape
    g_h, g_w = hgt // p, wid // p
    patches = images.reshape(b, g_h, p, g_w, p, c).transpose(0, 1, 3, 5, 2, 4).reshape(b, g_h * g_w, c * p * p)
    x = patches @ conv.reshape(width, -1).T
    cls = np.broadcast_to(sd["visual.class_embedding"], (b, 1, width))
    x = np.concatenate([cls, x], axis=1) + sd["visual.positional_embedding"]
    x = layer_norm(x, sd, "visual.ln_pre")
    i = 0
    while f"visual.transformer.resblocks.{i}.ln_1.weight" in sd:
        x = residual_block(x, sd, f"visual.transformer.resblocks.{i}", heads)
        i += 1
    return x


def encode_image(sd, images, heads):
    """(latent [B,E] un-normalised, tokens [B,N,vw]): avg_all pooling, ln_post after pooling, @proj."""
    tokens = vision_tokens(sd, images, heads)
    pooled = layer_norm(tokens.mean(1), sd, "visual.ln_post")
    return pooled @ sd["visual.proj"], tokens


def text_decoder(sd, tokens, heads, image_embs=None):
    """(lm_logits, ln_final output). Causal with cross-attention iff image_embs is given."""
    length = tokens.shape[1]
    x = sd["text.token_embedding.weight"][tokens] + sd["text.positional_embedding"][:length]
    captioning = image_embs is not None
    i = 0
    while f"text.resblocks.{i}.ln_1.weight" in sd:
        x = residual_block(x, sd, f"text.resblocks.{i}", heads, causal=captioning)
        if captioning and i % 2 == 0:
            x = residual_block(x, sd, f"text.cross_attn.{i // 2}", heads, kv=image_embs)
        i += 1
    h = layer_norm(x, sd, "text.ln_final")
    return h @ sd["text.text_projection"], h


def l2_normalise(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def forward(sd, images, tokens, vision_heads, text_heads):
    """The training forward: both passes, as MaMMUT.forward(is_training=True) returns them."""
    latent, image_tokens = encode_image(sd, images, vision_heads)
    _, h = text_decoder(sd, tokens, text_heads)
    image_embs = image_tokens @ sd["map_viz2txt_kv"]
    logits, _ = text_decoder(sd, tokens[:, :-1], text_heads, image_embs=image_embs)
    return {
        "image_features": l2_normalise(latent),
        "text_features": l2_normalise(h.mean(1)),
        "logit_scale": np.exp(sd["logit_scale"]),
        "logits": logits,
        "labels": tokens[:, 1:],
    }
