import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from vlscale.data import synth, synth_eval_sets, synth_scene, synth_stats, webdataset

from .conftest import NUM_SHARDS, PER_SHARD, TINY


def test_samples_are_a_pure_function_of_seed_split_index():
    a = synth.generate(TINY, 3, "train", 41)
    b = synth.generate(TINY, 3, "train", 41)
    assert np.array_equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    assert a["image"].shape == (32, 32, 3) and a["image"].dtype == np.uint8
    other_seed = synth.generate(TINY, 4, "train", 41)
    other_split = synth.generate(TINY, 3, "eval", 41)
    assert not np.array_equal(a["image"], other_seed["image"])
    assert not np.array_equal(a["image"], other_split["image"])
    src = synth.SynthSource(TINY, seed=3)
    assert src[41]["caption"] == a["caption"] and len(src) == 2**40


def _words(text):
    return set(re.findall(r"[a-z0-9-]+", text.lower()))


def test_captions_name_the_shape_count_and_usually_the_colour():
    n, colour_hits = 300, 0
    for i in range(n):
        s = synth.generate(TINY, 0, "train", i)
        text, lab = s["caption"].lower(), s["labels"]
        shape = TINY.shapes[lab["shape"]]
        assert any(syn in text for syn in synth_scene.SHAPE_SYNONYMS[shape]), text
        count = lab["count"] + 1
        count_forms = {synth_scene.COUNT_WORDS[count], str(count)} | ({"a", "an", "single"} if count == 1 else set())
        count_forms |= {"pair"} if count == 2 else set()
        assert _words(text) & count_forms, text
        colour = TINY.colours[lab["colour"]]
        colour_hits += bool(_words(text) & set(synth_scene.COLOUR_SYNONYMS.get(colour, [colour])))
    # Colour is left out of ~5% of captions on purpose (p_mention_colour = 0.95).
    assert 0.88 < colour_hits / n <= 1.0


def test_captions_vary_and_labels_are_balanced():
    stats = synth_stats.dataset_stats(TINY, num_samples=1500, seed=0)
    assert stats["unique_caption_fraction"] > 0.9
    assert stats["vocabulary"] > 80
    assert stats["label_combinations"] > 0.9 * len(TINY.colours) * len(TINY.shapes) * TINY.max_count
    for name, attr in stats["attributes"].items():
        assert attr["entropy_ratio"] > 0.97, name
        assert attr["max_min_ratio"] < 1.6, name


def test_zeroshot_tasks_are_balanced_with_clip_style_prompts():
    tasks = synth_eval_sets.make_zeroshot_tasks(TINY, num_per_task=24, seed=1)
    assert set(tasks) == {"colour", "shape", "count", "colour_shape"}
    shape = tasks["shape"]
    assert shape.images.shape == (24, 32, 32, 3)
    assert np.bincount(shape.labels).tolist() == [3] * 8
    assert np.bincount(tasks["count"].labels).tolist() == [6] * 4
    assert tasks["colour_shape"].prompts(0)[0] == "a photo of a red circle."
    assert tasks["count"].classnames[:2] == ["a single shape", "two shapes"]
    # Eval images follow their labels: a forced count-3 scene has 3 objects.
    s = synth.generate(TINY, 1, "zeroshot", 5, distractors=False, count=2)
    assert s["labels"]["count"] == 2


def test_retrieval_split_has_five_distinct_captions_per_image():
    images, captions = synth_eval_sets.make_retrieval_split(TINY, 6, seed=2)
    assert images.shape == (6, 32, 32, 3)
    assert all(len(c) == 5 for c in captions)
    assert np.mean([len(set(c)) for c in captions]) > 4.0


def test_eval_sets_roundtrip(tmp_path):
    synth_eval_sets.write_eval_sets(tmp_path, TINY, num_per_task=8, num_retrieval=3, seed=0)
    tasks, (images, captions) = synth_eval_sets.load_eval_sets(tmp_path / "zeroshot")
    fresh = synth_eval_sets.make_zeroshot_tasks(TINY, 8, seed=0)
    assert np.array_equal(tasks["shape"].images, fresh["shape"].images)
    assert tasks["colour"].templates == list(synth_eval_sets.COLOUR_TEMPLATES)
    assert images.shape[0] == 3 and len(captions[0]) == 5


def test_shards_read_back_with_correct_captions(tiny_shards):
    out, paths = tiny_shards
    assert [p.rsplit("/", 1)[-1] for p in paths] == [f"{i:05d}.tar" for i in range(NUM_SHARDS)]
    meta = json.loads((out / "synth.json").read_text())
    assert meta["seed"] == 7 and meta["config"]["image_size"] == 32
    records = [r for p in paths for r in webdataset.iter_tar_samples(p)]
    assert len(records) == NUM_SHARDS * PER_SHARD
    for i, rec in enumerate(records):
        expect = synth.generate(TINY, 7, "train", i)
        assert rec["__key__"] == expect["key"]
        assert rec["txt"].decode() == expect["caption"]
        assert json.loads(rec["json"])["labels"] == expect["labels"]
        pixels = np.asarray(Image.open(io.BytesIO(rec["jpg"])))
        # JPEG at quality 95 with 4:4:4 chroma stays close to the render and far from any other sample.
        own = np.abs(pixels.astype(int) - expect["image"]).mean()
        other = np.abs(pixels.astype(int) - synth.generate(TINY, 7, "train", i + 1)["image"]).mean()
        assert own < 6 and own < other / 4


def test_config_rejects_unknown_knobs():
    with pytest.raises(ValueError, match="unknown"):
        synth_scene.SynthConfig(shapes=("circle", "blob"))
    cfg = synth_scene.SynthConfig.from_dict(synth_scene.SynthConfig(max_count=3).to_dict())
    assert cfg.max_count == 3 and isinstance(cfg.shapes, tuple)
