"""MaMMUT: checkpoint key set and sizes for all 15 paper configs, masks and pooling on tiny cases, and the Flax
forward (both passes) against an independent float64 numpy implementation (tests/models/mammut_reference.py)."""

import dataclasses
import functools
import math
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models import mammut_reference as ref
from vlscale.models import convert, layer_layout, mammut, registry
from vlscale.models.config import PAPER_MODELS, get_config
from vlscale.train import losses

MAMMUT_MODELS = [n for n in PAPER_MODELS if n.startswith("mammut_")]

# Reference §1.5 / §3.2: exact parameter counts (= model_profile.csv mparams columns) and state-dict tensor counts.
EXPECTED_COUNTS = {  # name: (total, visual, text, tensors)
    "mammut_ViT-S-32": (85_615_873, 22_641_792, 62_826_624, 351),
    "mammut_ViT-S-16": (84_787_585, 21_813_504, 62_826_624, 351),
    "mammut_ViT-M-32": (134_732_801, 39_691_776, 94_778_880, 351),
    "mammut_ViT-S-14": (84_741_505, 21_767_424, 62_826_624, 351),
    "mammut_ViT-B-32": (183_021_313, 87_849_216, 94_778_880, 351),
    "mammut_ViT-M-16": (133_628_417, 38_587_392, 94_778_880, 351),
    "mammut_ViT-M-14": (133_566_977, 38_525_952, 94_778_880, 351),
    "mammut_ViT-B-14": (181_272_577, 86_100_480, 94_778_880, 351),
    "mammut_ViT-L-32": (510_626_561, 306_297_856, 203_542_272, 531),
    "mammut_ViT-B-16": (290_521_345, 86_389_248, 203_542_272, 387),
    "mammut_ViT-L-16": (508_417_793, 304_089_088, 203_542_272, 531),
    "mammut_ViT-H-32": (1_191_059_201, 634_991_360, 554_757_120, 855),
    "mammut_ViT-L-14": (508_294_913, 303_966_208, 203_542_272, 531),
    "mammut_ViT-H-16": (1_188_298_241, 632_230_400, 554_757_120, 855),
    "mammut_ViT-H-14": (1_188_144_641, 632_076_800, 554_757_120, 855),
}
TOLERANCE = 1e-5  # float32 vs float64 numpy, tiny widths


# --- an independent Flax -> open_clip key mapping (reference §3.3) ---------------------------------------------------

_LIST_ENTRY = re.compile(r"^(resblocks|cross_attn)_(\d+)$")


def to_torch_state_dict(params, xp=jnp):
    """open_clip_mammut state dict for per-block Flax params: ``xp=np`` on arrays, ``jnp`` under jax.eval_shape."""
    flat = flax.traverse_util.flatten_dict(params)
    out, qkv = {}, {}
    for path, a in flat.items():
        *mods, leaf = (_LIST_ENTRY.sub(r"\1.\2", p) for p in path)
        module = ".".join(mods)
        if mods[-2:-1] == ["attn"] and mods[-1] in ("query", "key", "value"):
            slot = ("query", "key", "value").index(mods[-1])
            name = ".".join(mods[:-1]) + (".in_proj_weight" if leaf == "kernel" else ".in_proj_bias")
            w = a.shape[0]
            qkv.setdefault(name, {})[slot] = a.reshape(w, w).T if leaf == "kernel" else a.reshape(-1)
        elif mods[-2:] == ["attn", "out"]:
            name = ".".join(mods[:-1]) + (".out_proj.weight" if leaf == "kernel" else ".out_proj.bias")
            out[name] = a.reshape(-1, a.shape[-1]).T if leaf == "kernel" else a
        elif mods[-1:] == ["conv1"]:
            out[module + ".weight"] = xp.transpose(a, (3, 2, 0, 1))
        elif leaf == "kernel":
            out[module + ".weight"] = a.T
        elif leaf in ("scale", "embedding"):
            out[module + ".weight"] = a
        else:
            out[f"{module}.{leaf}" if module else leaf] = a
    for name, parts in qkv.items():
        out[name] = xp.concatenate([parts[0], parts[1], parts[2]], axis=0)
    return out


def expected_state_dict_shapes(name):
    """The fork's state-dict keys and shapes, generated from the config by reference §3.1 (visual) and §3.2."""
    cfg = get_config(name)
    v, t = cfg.vision, cfg.text
    vw, tw, vocab = v.width, t.width, t.vocab_size
    keys = {
        "logit_scale": (),
        "map_viz2txt_kv": (vw, tw),
        "visual.class_embedding": (vw,),
        "visual.positional_embedding": (v.num_tokens, vw),
        "visual.proj": (vw, cfg.embed_dim),
        "visual.conv1.weight": (vw, 3, v.patch_size, v.patch_size),
        "text.text_projection": (tw, vocab),
        "text.positional_embedding": (t.context_length, tw),
        "text.token_embedding.weight": (vocab, tw),
    }
    for prefix, w in (("visual.ln_pre", vw), ("visual.ln_post", vw), ("text.ln_final", tw)):
        keys.update({f"{prefix}.weight": (w,), f"{prefix}.bias": (w,)})

    def block(prefix, w, mlp=True, cross=False):
        lns = ["ln_1", "ln_2"] if mlp else ["ln_1"]
        if cross:
            lns.append("ln_1_kv")
        for ln in lns:
            keys.update({f"{prefix}.{ln}.weight": (w,), f"{prefix}.{ln}.bias": (w,)})
        keys.update({f"{prefix}.attn.in_proj_weight": (3 * w, w), f"{prefix}.attn.in_proj_bias": (3 * w,),
                     f"{prefix}.attn.out_proj.weight": (w, w), f"{prefix}.attn.out_proj.bias": (w,)})
        if mlp:
            keys.update({f"{prefix}.mlp.c_fc.weight": (4 * w, w), f"{prefix}.mlp.c_fc.bias": (4 * w,),
                         f"{prefix}.mlp.c_proj.weight": (w, 4 * w), f"{prefix}.mlp.c_proj.bias": (w,)})

    for i in range(v.layers):
        block(f"visual.transformer.resblocks.{i}", vw)
    for i in range(t.layers):
        block(f"text.resblocks.{i}", tw, mlp=(i % 2 == 1) or t.has_mlp)
        if i % 2 == 0:
            block(f"text.cross_attn.{i // 2}", tw, cross=True)
    return keys


@functools.cache
def checkpoint_shapes_via_scan(name):
    """torch key -> shape of the model built with scan_layers (fast to trace), unstacked to the per-block layout."""
    model = registry.build_model(name, scan_layers=True)
    shapes = registry.param_shapes(model)
    as_torch = lambda p: to_torch_state_dict(layer_layout.unstack_layers(mammut.to_checkpoint_layout(p)))  # noqa: E731
    return {k: tuple(s.shape) for k, s in jax.eval_shape(as_torch, shapes).items()}


@pytest.mark.parametrize("name", MAMMUT_MODELS)
def test_state_dict_keys_shapes_and_counts(name):
    got = checkpoint_shapes_via_scan(name)
    expected = expected_state_dict_shapes(name)
    assert set(got) == set(expected), (sorted(set(got) - set(expected))[:5], sorted(set(expected) - set(got))[:5])
    assert got == expected
    total, visual, text, tensors = EXPECTED_COUNTS[name]
    size = lambda keys: sum(math.prod(got[k]) for k in keys)  # noqa: E731
    assert len(got) == tensors
    assert size(got) == total
    assert size(k for k in got if k.startswith("visual.")) == visual
    assert size(k for k in got if k.startswith("text.")) == text


def test_unscanned_layout_gives_the_same_state_dict_as_the_scanned_one():
    name = "mammut_ViT-B-16"  # has_mlp=true and the text-plus width: the 387-tensor case
    shapes = registry.param_shapes(registry.build_model(name))
    got = {k: tuple(s.shape) for k, s in jax.eval_shape(to_torch_state_dict, shapes).items()}
    assert got == checkpoint_shapes_via_scan(name)
    # The core converter names every parameter exactly as this independent mapping does.
    for path in flax.traverse_util.flatten_dict(shapes):
        key, _, _ = convert.flax_leaf_to_torch(path)
        assert key in got


# --- tiny models: shared parameters and compiled functions ----------------------------------------------------------

TINY = ("tiny-mammut", "tiny-mammut-mlp")


def random_params(model, seed):
    """Dense random float32 params of the model's shapes, every entry non-zero (LM head, biases, LN included).

    Drawn with numpy from ``param_shapes`` (no compiled init: XLA's threefry makes that slow on CPU), scaled
    like a trained network: kernels ~ 1/sqrt(fan_in), LN scales ~ 1, biases ~ 0.1.
    """
    rng = np.random.default_rng(seed)
    flat = flax.traverse_util.flatten_dict(registry.param_shapes(model))
    out = {}
    for path, spec in flat.items():
        shape, leaf = tuple(spec.shape), path[-1]
        if leaf == "logit_scale":
            value = np.full(shape, math.log(1 / 0.07))
        elif leaf == "scale" or leaf == "gamma":
            value = 1.0 + 0.1 * rng.normal(size=shape)
        elif leaf == "kernel" and path[-2] in ("query", "key", "value"):
            value = rng.normal(size=shape) / math.sqrt(shape[0])
        elif leaf == "kernel":
            value = rng.normal(size=shape) / math.sqrt(math.prod(shape[:-1]))
        elif leaf in ("text_projection", "map_viz2txt_kv", "proj"):
            value = rng.normal(size=shape) / math.sqrt(shape[0])
        elif leaf in ("embedding", "positional_embedding", "class_embedding"):
            value = 0.5 * rng.normal(size=shape)
        else:
            value = 0.1 * rng.normal(size=shape)
        out[path] = value.astype(np.float32)
    return flax.traverse_util.unflatten_dict(out)


@functools.cache
def tiny_setup(name):
    """A tiny model, its init and perturbed params, two real captions, and jitted functions ``f(params, ...)``."""
    model = registry.build_model(name)
    params = random_params(model, seed=1)
    cfg = model.config
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    tokens = np.zeros((2, cfg.context_length), np.int32)
    tokens[0, :6] = [49406, 320, 1125, 539, 518, 49407]
    tokens[1, :9] = [49406, 320, 2368, 530, 320, 3720, 1400, 269, 49407]

    def jitted(method, **static):
        return jax.jit(lambda p, *args: model.apply({"params": p}, *args, method=method, **static))

    fns = {
        "forward": jitted(None),
        "encode_text": jitted(mammut.MaMMUT.encode_text, normalize=False),
        "encode_image": jitted(mammut.MaMMUT.encode_image),
        "text_hidden": jitted(lambda m, tk: m.text(tk, lm_head=False)[1]),
        "vision_tokens": jitted(lambda m, im: m.visual(im)[1]),
        "caption_from_memory": jitted(mammut.MaMMUT.caption_logits_from_memory),
        "memory": jitted(mammut.MaMMUT.image_memory),
    }
    return dict(name=name, model=model, params=params, cfg=cfg, images=images, tokens=tokens, fns=fns)


@pytest.fixture(scope="module")
def tiny():
    """has_mlp=false (attention-only even blocks), the variant most of the paper's MaMMUTs use."""
    setup = tiny_setup("tiny-mammut")
    return dict(setup, call=lambda fn, *args: setup["fns"][fn](setup["params"], *args))


def _max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("name", TINY)
def test_forward_matches_numpy_reference(name):
    tiny = tiny_setup(name)
    cfg, params = tiny["cfg"], tiny["params"]
    sd = {k: np.asarray(v, np.float64) for k, v in to_torch_state_dict(params, xp=np).items()}
    images = tiny["images"].astype(np.float64)
    want = ref.forward(sd, images, tiny["tokens"], cfg.vision.heads, cfg.text.heads)
    with jax.default_matmul_precision("highest"):
        got = tiny["fns"]["forward"](params, tiny["images"], tiny["tokens"])
        got_latent, got_memory = tiny["fns"]["memory"](params, tiny["images"])
        got_mean = tiny["fns"]["encode_text"](params, tiny["tokens"])
    assert set(got) == set(want)
    assert got["logits"].shape == (2, cfg.context_length - 1, cfg.text.vocab_size)
    np.testing.assert_array_equal(got["labels"], tiny["tokens"][:, 1:])
    for key in ("image_features", "text_features", "logit_scale", "logits"):
        assert _max_err(got[key], want[key]) < TOLERANCE, key
    # The un-normalised pieces too: image latent, cross-attention memory, contrastive mean.
    latent, tokens = ref.encode_image(sd, images, cfg.vision.heads)
    memory = tokens @ sd["map_viz2txt_kv"]
    assert _max_err(got_latent, latent) < TOLERANCE
    assert _max_err(got_memory, memory) < TOLERANCE * np.abs(memory).max()
    _, h = ref.text_decoder(sd, tiny["tokens"], cfg.text.heads)
    assert _max_err(got_mean, h.mean(1)) < TOLERANCE
    # The training objective on this forward: caption CE over non-pad targets and InfoNCE, against numpy.
    total, parts = losses.mammut_loss(got)
    log_probs = want["logits"] - np.log(np.exp(want["logits"]).sum(-1, keepdims=True))
    labels = want["labels"]
    keep = labels != 0
    caption = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0][keep].mean()
    sims = want["logit_scale"] * want["image_features"] @ want["text_features"].T
    clip = 0.5 * (np.mean(np.log(np.exp(sims).sum(1)) - np.diag(sims))
                  + np.mean(np.log(np.exp(sims).sum(0)) - np.diag(sims)))
    assert float(parts["caption_loss"]) == pytest.approx(caption, rel=1e-5)
    assert float(parts["clip_loss"]) == pytest.approx(clip, rel=1e-5)
    assert float(total) == pytest.approx(clip + 2.0 * caption, rel=1e-5)


def test_flax_to_torch_matches_core_converter(tiny):
    mine = to_torch_state_dict(tiny["params"], xp=np)
    theirs = convert.flax_to_torch(tiny["params"], tiny["name"])
    assert set(mine) == set(theirs)
    for k in mine:
        np.testing.assert_array_equal(mine[k], theirs[k], err_msg=k)
    # ... and the reverse conversion (with DDP's module. prefix) restores the Flax params bit for bit.
    back = convert.torch_to_flax({f"module.{k}": v for k, v in theirs.items()}, tiny["name"])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), tiny["params"], back)


def test_contrastive_embedding_is_a_mean_over_all_positions_including_pads(tiny):
    tokens = tiny["tokens"]
    base = np.asarray(tiny["call"]("encode_text", tokens))
    changed = tokens.copy()
    changed[0, -1] = 1125  # a token after EOT, in the zero padding
    emb = np.asarray(tiny["call"]("encode_text", changed))
    assert _max_err(emb[0], base[0]) > 1e-3  # no pad mask, no EOT pooling
    np.testing.assert_allclose(emb[1], base[1], atol=1e-6)  # rows are independent


def test_contrastive_pass_is_bidirectional(tiny):
    """Position 0's output depends on the last token: no causal mask in the contrastive pass."""
    tokens = tiny["tokens"]
    changed = tokens.copy()
    changed[:, -1] = 500
    assert _max_err(tiny["call"]("text_hidden", tokens)[:, 0], tiny["call"]("text_hidden", changed)[:, 0]) > 1e-4


def test_caption_logits_are_causal(tiny):
    memory = tiny["call"]("memory", tiny["images"])[1]
    tokens = tiny["tokens"]
    base = np.asarray(tiny["call"]("caption_from_memory", memory, tokens))
    t = 3
    changed = tokens.copy()
    changed[:, t + 1:] = np.arange(changed.shape[1] - t - 1) + 1000
    logits = np.asarray(tiny["call"]("caption_from_memory", memory, changed))
    np.testing.assert_allclose(logits[:, : t + 1], base[:, : t + 1], atol=1e-5)
    assert _max_err(logits[:, t + 1], base[:, t + 1]) > 1e-3


def test_cross_attention_reads_every_image_token_including_cls(tiny):
    memory = np.asarray(tiny["call"]("memory", tiny["images"])[1])
    tokens = tiny["tokens"]
    base = np.asarray(tiny["call"]("caption_from_memory", memory, tokens))
    for index in (0, memory.shape[1] - 1):  # the class token and the last patch
        changed = memory.copy()
        # Not a constant shift, which ln_1_kv would remove.
        changed[:, index] += np.random.default_rng(index).normal(size=memory.shape[-1]).astype(np.float32)
        logits = np.asarray(tiny["call"]("caption_from_memory", changed, tokens))
        assert _max_err(logits[:, 0], base[:, 0]) > 1e-4, index  # even the first position sees it


def test_image_embedding_pools_all_tokens_then_ln_post(tiny):
    """encode_image = normalize(ln_post(mean over CLS + patches) @ proj), recomputed from the raw tokens."""
    tokens = tiny["call"]("vision_tokens", tiny["images"])
    vp = tiny["params"]["visual"]
    pooled = np.asarray(tokens, np.float64).mean(1)
    pooled = (pooled - pooled.mean(-1, keepdims=True)) / np.sqrt(pooled.var(-1, keepdims=True) + 1e-5)
    latent = (pooled * vp["ln_post"]["scale"] + vp["ln_post"]["bias"]) @ np.asarray(vp["proj"], np.float64)
    got = tiny["call"]("encode_image", tiny["images"])  # normalize=True is MaMMUT's default
    np.testing.assert_allclose(got, ref.l2_normalise(latent), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-6)
    # The memory for cross-attention is the raw tokens (no ln_post) @ map_viz2txt_kv.
    memory = tiny["call"]("memory", tiny["images"])[1]
    np.testing.assert_allclose(memory, np.asarray(tokens) @ tiny["params"]["map_viz2txt_kv"], rtol=1e-5, atol=1e-4)


def test_eval_forward_skips_contrastive_pass_and_keeps_all_positions(tiny):
    model, cfg = tiny["model"], tiny["cfg"]
    out = jax.eval_shape(lambda p: model.apply({"params": p}, tiny["images"], tiny["tokens"], train=False),
                         tiny["params"])
    assert set(out) == {"image_features", "logit_scale", "logits", "labels"}
    assert out["logits"].shape == (2, cfg.context_length, cfg.text.vocab_size)
    # Training logits are the same causal pass on tokens[:, :-1]: equal to the first L-1 positions of all L.
    memory = tiny["call"]("memory", tiny["images"])[1]
    full = tiny["call"]("caption_from_memory", memory, tiny["tokens"])
    train_logits = tiny["call"]("forward", tiny["images"], tiny["tokens"])["logits"]
    np.testing.assert_allclose(full[:, :-1], train_logits, atol=1e-5)


def test_scan_and_remat_layouts_compute_the_same_function(tiny):
    name, params = tiny["name"], tiny["params"]
    scanned = registry.build_model(name, scan_layers=True, remat="block")
    stacked = layer_layout.stack_layers({"visual": params["visual"]})["visual"]
    scan_params = dict(mammut.to_scan_layout(params), visual=stacked)

    fwd = lambda p: scanned.apply({"params": p}, tiny["images"], tiny["tokens"])  # noqa: E731
    out = jax.jit(fwd)(scan_params)
    want = tiny["call"]("forward", tiny["images"], tiny["tokens"])
    for key in ("image_features", "text_features", "logits"):
        assert _max_err(out[key], want[key]) < 1e-5, key
    # Both passes differentiate through the rematerialised scans (traced only: compiling it is slow on CPU).
    grad = jax.eval_shape(jax.grad(lambda p: fwd(p)["text_features"].sum() + fwd(p)["logits"].sum()), scan_params)
    assert jax.tree.map(lambda g: g.shape, grad) == jax.tree.map(np.shape, scan_params)
    back = layer_layout.unstack_layers(mammut.to_checkpoint_layout(scan_params))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), back, params)


def test_bfloat16_compute_keeps_float32_params_and_stays_close(tiny):
    model = registry.build_model(tiny["name"], dtype="bfloat16")
    out = jax.jit(lambda p: model.apply({"params": p}, tiny["images"], tiny["tokens"]))(tiny["params"])
    want = tiny["call"]("forward", tiny["images"], tiny["tokens"])
    assert out["logits"].dtype == jnp.bfloat16
    assert out["image_features"].dtype == jnp.float32
    scale = float(np.abs(np.asarray(want["logits"])).max())
    assert _max_err(out["logits"], want["logits"]) < 0.1 * scale
    assert float(np.min(np.sum(np.asarray(out["text_features"]) * np.asarray(want["text_features"]), -1))) > 0.99


# --- initialisation (reference §4) ----------------------------------------------------------------------------------


def test_initialisation_follows_open_clip_mammut():
    # A shallower tiny model with a small vocabulary: the same init code, a quicker compile.
    base = get_config("tiny-mammut")
    cfg = dataclasses.replace(base, vision=dataclasses.replace(base.vision, layers=1),
                              text=dataclasses.replace(base.text, layers=2, vocab_size=4096))
    model = registry.build_model(cfg)
    # The "rbg" generator draws from the same distributions and compiles about 2x faster than threefry on CPU.
    p = registry.init_params(model, jax.random.key(0, impl="rbg"))
    t = p["text"]
    assert float(p["logit_scale"]) == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    assert not np.any(np.asarray(t["text_projection"]))  # LM head zeros: uniform first predictions
    assert np.std(t["token_embedding"]["embedding"]) == pytest.approx(0.02, rel=0.01)
    assert np.std(t["positional_embedding"]) == pytest.approx(0.01, rel=0.1)
    assert np.std(p["map_viz2txt_kv"]) == pytest.approx(1.0, rel=0.05)  # N(0, 1), no scaling
    # Decoder blocks keep torch defaults: xavier-uniform packed in_proj (bound sqrt(6 / 4w)), zero attn biases.
    w = cfg.text.width
    q = np.asarray(t["resblocks_1"]["attn"]["query"]["kernel"])
    assert np.abs(q).max() <= math.sqrt(6 / (4 * w)) and np.abs(q).max() > 0.9 * math.sqrt(6 / (4 * w))
    assert not np.any(np.asarray(t["cross_attn_0"]["attn"]["value"]["bias"]))
    fc = np.asarray(t["cross_attn_0"]["mlp"]["c_fc"]["kernel"])
    assert np.abs(fc).max() <= 1 / math.sqrt(w)
    np.testing.assert_array_equal(t["cross_attn_0"]["ln_1_kv"]["scale"], np.ones(w))
    # The first captions are uniform over the vocabulary.
    images, tokens = registry.dummy_inputs(cfg, 1)
    logits = jax.jit(lambda q: model.apply({"params": q}, images, tokens[:, :4],
                                           method=mammut.MaMMUT.caption_logits))(p)
    np.testing.assert_array_equal(logits, 0.0)


def test_every_parameter_has_logical_axes():
    model = registry.build_model("tiny-mammut")
    axes = flax.traverse_util.flatten_dict(registry.param_logical_axes(model))
    shapes = flax.traverse_util.flatten_dict(registry.param_shapes(model))
    assert set(axes) == set(shapes)
    for path, spec in axes.items():
        assert len(spec) == len(shapes[path].shape), path
    assert tuple(axes[("text", "text_projection")]) == ("embed", "vocab")
    assert tuple(axes[("text", "token_embedding", "embedding")]) == ("vocab", "embed")
    scanned = flax.traverse_util.flatten_dict(registry.param_logical_axes(
        registry.build_model("tiny-mammut", scan_layers=True)))
    assert tuple(scanned[("text", "layer_groups", "cross", "attn", "query", "kernel")]) == (
        "layers", "embed", "heads", "kv")
