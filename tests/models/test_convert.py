"""Checkpoint conversion: file formats and layouts open_clip writes, key/shape errors, scan layouts, Orbax."""

import sys

import numpy as np
import pytest
import torch

from vlscale.errors import UserError
from vlscale.models import convert, layer_layout, saved_params, state_dict_files
from vlscale.models.config import PAPER_MODELS, get_config

# Tensor counts of the open_clip / fork state dicts (reference §1.5 and §3.2).
TENSOR_COUNTS = {"ViT-S-32-alt": 278, "ViT-B-32": 302, "ViT-M-16-alt": 326, "ViT-L-14": 446, "ViT-H-14": 686,
                 "mammut_ViT-S-32": 351, "mammut_ViT-B-16": 387, "mammut_ViT-L-32": 531, "mammut_ViT-H-16": 855}


def synthetic_state_dict(name, seed=0):
    """A random open_clip-layout state dict of the right keys and shapes."""
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in convert.expected_state_dict_shapes(name).items()}


def assert_trees_equal(a, b):
    fa, fb = layer_layout.flatten_tree(a), layer_layout.flatten_tree(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])), k


def test_state_dict_key_sets_of_the_paper_models():
    for name, count in TENSOR_COUNTS.items():
        assert len(convert.expected_state_dict_shapes(name)) == count, name
    b32 = convert.expected_state_dict_shapes("ViT-B-32")
    assert b32["visual.conv1.weight"] == (768, 3, 32, 32)
    assert b32["transformer.resblocks.11.attn.in_proj_weight"] == (1536, 512)
    assert b32["text_projection"] == (512, 512) and b32["logit_scale"] == ()
    m = convert.expected_state_dict_shapes("mammut_ViT-B-32")
    assert m["text.text_projection"] == (512, 49408) and m["map_viz2txt_kv"] == (768, 512)
    assert "text.resblocks.0.mlp.c_fc.weight" not in m and "text.resblocks.1.mlp.c_fc.weight" in m
    assert m["text.cross_attn.5.ln_1_kv.weight"] == (512,) and "text.cross_attn.6.ln_1.weight" not in m
    assert "visual.transformer.resblocks.0.ls_1.gamma" in convert.expected_state_dict_shapes("ViT-M-16-alt")
    assert len(PAPER_MODELS) == 35


@pytest.fixture(scope="module")
def tiny_state():
    return synthetic_state_dict("tiny-clip")


def test_every_open_clip_file_layout_gives_the_same_params(tmp_path, tiny_state):
    import open_clip

    params = convert.torch_to_flax(tiny_state, "tiny-clip")
    tensors = {k: torch.from_numpy(v) for k, v in tiny_state.items()}
    # Training checkpoint: DDP's module. prefix inside {"state_dict": ...} beside optimizer state.
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in tensors.items()},
                "optimizer": {"state": {}}}, tmp_path / "epoch_3.pt")
    torch.save(tensors, tmp_path / "bare.pt")
    # CustomTextCLIP layout (force_custom_text): open_clip's own converter moves the text tower under text.
    custom = open_clip.model.convert_to_custom_text_state_dict(dict(tensors))
    assert "text.token_embedding.weight" in custom
    torch.save({"state_dict": custom}, tmp_path / "custom_text.pt")
    state_dict_files.save_state_dict_file(tiny_state, tmp_path / "model.safetensors")
    for f in ("epoch_3.pt", "bare.pt", "custom_text.pt", "model.safetensors"):
        assert_trees_equal(convert.from_open_clip(tmp_path / f, "tiny-clip"), params)
    # bf16 tensors are widened to float32.
    torch.save({k: v.bfloat16() for k, v in tensors.items()}, tmp_path / "bf16.pt")
    p16 = convert.from_open_clip(tmp_path / "bf16.pt", "tiny-clip")
    assert p16["logit_scale"].dtype == np.float32


def test_export_layouts(tiny_state):
    params = convert.torch_to_flax(tiny_state, "tiny-clip")
    top = convert.flax_to_torch(params)
    assert top.keys() == tiny_state.keys()
    prefixed = convert.flax_to_torch(params, "tiny-clip", text_prefix=True)
    assert "text.token_embedding.weight" in prefixed and "visual.proj" in prefixed and "logit_scale" in prefixed
    assert_trees_equal(convert.torch_to_flax(prefixed, "tiny-clip"), params)


def test_mismatches_are_listed_in_one_line(tiny_state):
    bad = dict(tiny_state)
    del bad["ln_final.weight"]
    bad["visual.extra_token"] = np.zeros(3, np.float32)
    bad["text_projection"] = np.zeros((64, 32), np.float32)
    with pytest.raises(convert.CheckpointMismatchError) as e:
        convert.torch_to_flax(bad, "tiny-clip")
    msg = str(e.value)
    assert "\n" not in msg and "'tiny-clip'" in msg
    assert "1 missing keys [ln_final.weight]" in msg
    assert "1 unexpected keys [visual.extra_token]" in msg
    assert "text_projection: got [64, 32], expected [64, 64]" in msg
    # A MaMMUT checkpoint given to a CLIP name fails loudly too.
    with pytest.raises(convert.CheckpointMismatchError, match="missing keys"):
        convert.torch_to_flax(synthetic_state_dict("tiny-mammut"), "tiny-clip")


def test_pt_without_torch_says_what_to_install(tmp_path, monkeypatch, tiny_state):
    torch.save(tiny_state, tmp_path / "x.pt")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(UserError, match=r"pip install 'vlscale\[torch\]'.*safetensors needs no torch"):
        state_dict_files.load_state_dict_file(tmp_path / "x.pt")
    with pytest.raises(UserError, match="does not exist"):
        state_dict_files.load_state_dict_file(tmp_path / "missing.safetensors")


def test_mammut_round_trip_in_both_layouts():
    state = synthetic_state_dict("tiny-mammut", seed=3)
    params = convert.torch_to_flax(state, "tiny-mammut")
    assert params["text"]["text_projection"].shape == (64, 49408)
    assert "mlp" not in params["text"]["resblocks_0"] and "ln_1_kv" in params["text"]["cross_attn_1"]
    back = convert.flax_to_torch(params)
    assert back.keys() == state.keys() and all(np.array_equal(back[k], state[k]) for k in state)
    scanned = convert.torch_to_flax(state, "tiny-mammut", scan_layers=True)
    assert "layer_groups" in scanned["text"] and "resblocks" in scanned["visual"]["transformer"]
    back = convert.flax_to_torch(scanned)
    assert all(np.array_equal(back[k], state[k]) for k in state)


def test_orbax_save_and_load(tmp_path, tiny_state):
    params = convert.torch_to_flax(tiny_state, "tiny-clip", scan_layers=True)
    saved_params.save_params(tmp_path / "ckpt", params, "tiny-clip")
    loaded, meta = saved_params.load_params(tmp_path / "ckpt")
    assert meta["model"] == "tiny-clip"
    assert "resblocks_1" in loaded["transformer"]  # stored unstacked
    assert_trees_equal(loaded, layer_layout.unstack_layers(params))
    stacked, _ = saved_params.load_params(tmp_path / "ckpt", scan_layers=True)
    assert_trees_equal(stacked, params)
    with pytest.raises(UserError, match="not a vlscale checkpoint"):
        saved_params.load_params(tmp_path)
    assert get_config(meta["model"]).family == "clip"
