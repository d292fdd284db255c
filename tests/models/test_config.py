"""The model registry: the paper's 35 configurations, tiny ones, name errors, runtime options, ConfigDicts."""

import pandas as pd
import pytest

from vlscale.configs import model as model_configs
from vlscale.errors import UserError
from vlscale.models.config import PAPER_MODELS, RuntimeOptions, get_config, list_models, with_depth


@pytest.fixture(scope="module")
def profile(shared_data):
    table = pd.read_csv(shared_data / "model_profile.csv")
    return table[table.namespace.isin(["clip", "mammut"])]


def test_paper_models_are_the_profile_rows_in_order(profile):
    assert list(PAPER_MODELS) == list(profile.model)
    assert len(PAPER_MODELS) == 35
    for _, row in profile.iterrows():
        cfg = get_config(row.model)
        assert cfg.family == row.namespace
        assert cfg.image_size == row.image_size == 224


def test_architecture_facts_from_the_reference():
    h14 = get_config("ViT-H-14")
    assert (h14.vision.width, h14.vision.heads, h14.vision.head_width, h14.vision.num_tokens) == (1280, 16, 80, 257)
    assert get_config("ViT-M-16-alt").vision.ls_init_value == 1e-4
    assert sum(get_config(n).vision.ls_init_value is not None for n in PAPER_MODELS) == 1
    b32 = get_config("mammut_ViT-B-32")
    assert b32.vision.pool_type == "avg_all" and b32.vision.final_ln_after_pool
    assert not b32.text.has_mlp and b32.text.num_cross_blocks == 6
    assert [b32.text.self_block_has_mlp(i) for i in range(4)] == [False, True, False, True]
    # mammut_ViT-B-16 uses the text-plus width (reference §1.5).
    assert get_config("mammut_ViT-B-16").text.width == 768 and get_config("mammut_ViT-B-16").text.has_mlp
    for n in PAPER_MODELS:
        cfg = get_config(n)
        assert cfg.context_length == 77 and cfg.text.vocab_size == 49408
        if cfg.family == "mammut":
            assert cfg.embed_dim == cfg.text.width


def test_tiny_configs_keep_the_real_vocabulary():
    names = list_models()
    assert names[:35] == list(PAPER_MODELS)
    for n in ("tiny-clip", "tiny-mammut"):
        cfg = get_config(n)
        assert cfg.image_size == 32 and cfg.vision.patch_size == 8 and cfg.context_length == 16
        assert cfg.text.vocab_size == 49408 and cfg.vision.width == 64
    assert get_config("tiny-mammut").family == "mammut"


def test_unknown_name_lists_close_names():
    with pytest.raises(UserError, match=r"ViT-B-32") as e:
        get_config("ViT-B32")
    assert "\n" not in str(e.value)


def test_with_depth_and_runtime_options():
    small_h = with_depth(get_config("ViT-H-14"), vision_layers=2, text_layers=1, name="h14-short")
    assert (small_h.vision.layers, small_h.text.layers, small_h.vision.head_width) == (2, 1, 80)
    assert get_config("ViT-H-14").vision.layers == 32  # the registry entry is untouched
    with pytest.raises(UserError, match="float16"):
        RuntimeOptions(dtype="float16")
    with pytest.raises(UserError, match="remat"):
        RuntimeOptions(remat="some")


def test_configdict_for_a_model_name():
    d = model_configs.get_config("ViT-L-14")
    assert d.model == "ViT-L-14" and d.vision.patch_size == 14 and d.text.width == 768
    assert d.runtime.dtype == "float32" and d.runtime.scan_layers is False
    d = model_configs.get_config("model=tiny-clip,dtype=bfloat16,scan_layers=true,remat=block")
    assert (d.model, d.runtime.dtype, d.runtime.scan_layers, d.runtime.remat) == ("tiny-clip", "bfloat16", True,
                                                                                     "block")
    with pytest.raises(UserError, match="unknown keys"):
        model_configs.get_config("ViT-B-32,colour=red")


def test_shapes_study_configs():
    """The CPU-study ladder: 32 px, patch 8, context 16, head width 32, MaMMUT with 2x text layers."""
    for suffix, width, layers, heads in (("XS", 32, 1, 1), ("S", 64, 2, 2), ("M", 128, 3, 4), ("L", 256, 4, 8)):
        clip, mammut = get_config(f"shapes-clip-{suffix}"), get_config(f"shapes-mammut-{suffix}")
        for cfg in (clip, mammut):
            assert (cfg.image_size, cfg.vision.patch_size, cfg.context_length) == (32, 8, 16)
            assert (cfg.vision.width, cfg.vision.layers, cfg.vision.heads) == (width, layers, heads)
            assert (cfg.text.width, cfg.text.heads, cfg.embed_dim) == (width, heads, width)
        assert clip.family == "clip" and clip.text.layers == layers
        assert mammut.family == "mammut" and mammut.text.layers == 2 * layers and not mammut.text.has_mlp
        assert mammut.text.num_cross_blocks == layers
    names = list_models()
    assert names.index("shapes-clip-XS") > 34 and "shapes-mammut-L" in names
