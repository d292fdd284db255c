"""Results rows and the append, prompts files, dataset specs and padded batches (no model involved)."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vlscale.errors import UserError
from vlscale.eval import batches, datasets, file_sets, prompts, results
from vlscale.scaling.results import load_results

RUN = {"run": "r1", "model": "tiny-clip", "model_type": "clip", "pretrain_dataset": "synth", "lr_scheduler": "cosine",
       "samples_seen": 6400, "gflops_per_sample": 0.5, "global_batch_size": 32, "lr": 1e-3, "warmup": 10}


def ckpt(step, samples, final, run=RUN):
    return SimpleNamespace(model_name="tiny-clip", run=run, step=step, samples_seen=samples, final=final)


def test_final_checkpoint_rows_use_the_runs_nominal_samples_intermediate_ones_their_own():
    fin = results.checkpoint_identity(ckpt(200, 6432, True))
    assert (fin["samples_seen"], fin["samples_seen_actual"]) == (6400, 6432)
    assert (fin["compute_gflops"], fin["compute_gflops_actual"]) == (3200.0, 3216.0)
    mid = results.checkpoint_identity(ckpt(100, 3200, False))
    assert (mid["samples_seen"], mid["samples_seen_actual"], mid["compute_gflops"]) == (3200, 3200, 1600.0)
    assert mid["step"] == 100 and mid["run"] == "r1" and mid["warmup"] == 10


def test_converted_checkpoint_identity_needs_the_three_flags():
    conv = SimpleNamespace(model_name="tiny-clip", run=None, step=None, samples_seen=None, final=False)
    assert results.checkpoint_identity(conv) is None
    assert results.checkpoint_identity(conv, {"pretrain_dataset": "x", "lr_scheduler": "cosine"}) is None
    ident = results.checkpoint_identity(conv, {"pretrain_dataset": "x", "lr_scheduler": "cosine",
                                               "samples_seen": "1.28e9"})
    assert ident["samples_seen"] == 1_280_000_000 and ident["model_type"] == "clip"
    assert ident["compute_gflops"] == pytest.approx(ident["gflops_per_sample"] * 1.28e9)


def test_append_is_idempotent_valid_for_the_fitter_and_atomic(tmp_path, monkeypatch):
    table = tmp_path / "results.csv"
    ident = results.checkpoint_identity(ckpt(200, 6400, True))
    rows = results.rows_for(ident, "synth_colour", {"acc1": 0.5, "acc5": 0.9, "mean_per_class_recall": 0.45})
    assert results.append_rows(table, rows) == 3
    assert results.append_rows(table, rows) == 0  # re-running adds nothing
    other = results.rows_for(results.checkpoint_identity(ckpt(100, 3200, False)), "synth_colour", {"acc1": 0.3})
    assert results.append_rows(table, other + rows) == 1
    df = load_results(table)  # the fitter's validation accepts the table as written
    assert len(df) == 4 and set(df["metric"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert results.has_rows(table, "r1", 100, "synth_colour") and not results.has_rows(table, "r1", 100, "synth_shape")
    # A writer killed before the replace leaves the old table whole.
    before = table.read_bytes()

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        results.append_rows(table, results.rows_for(ident, "synth_shape", {"acc1": 0.2}))
    assert table.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_outputs_append_with_a_key_skips_rows_already_there_and_checks_the_header(tmp_path):
    from vlscale.runtime import files as outputs

    f = tmp_path / "t.csv"
    key = lambda r: (r["a"], float(r["b"]))  # noqa: E731 - old rows come back as strings
    assert outputs.append_new_rows(f, [{"a": "x", "b": 1}, {"a": "y", "b": 2}, {"a": "x", "b": 1.0}], key) == 2
    mtime = f.stat().st_mtime_ns
    assert outputs.append_new_rows(f, [{"a": "y", "b": "2.0"}], key) == 0 and f.stat().st_mtime_ns == mtime
    assert outputs.append_rows(f, [{"a": "z", "b": 3, "c": "new"}, {"a": "x", "b": 1}], key=key) == 3
    assert f.read_text().splitlines() == ["a,b,c", "x,1,", "y,2,", "z,3,new"]
    assert outputs.append_rows(f, [{"a": "x", "b": 1}]) == 4  # no key: every row lands

    def refuse(header):
        raise UserError(f"header {header}")

    with pytest.raises(UserError, match=r"header \['a', 'b', 'c'\]"):
        outputs.append_rows(f, [{"a": "w", "b": 0}], key=key, check=refuse)
    assert len(f.read_text().splitlines()) == 5


def test_append_refuses_a_file_that_is_not_a_results_table(tmp_path):
    f = tmp_path / "other.csv"
    f.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a results table"):
        results.append_rows(f, [{"metric": "acc1"}])


def test_prompt_files_and_their_errors(tmp_path):
    (tmp_path / "names.txt").write_text("cat\n\ndog\n")
    (tmp_path / "t.json").write_text(json.dumps(["a photo of a {c}.", "art of the {c}"]))
    p = prompts.user_prompts(None, tmp_path / "names.txt", tmp_path / "t.json")
    assert p.texts() == ["a photo of a cat.", "art of the cat", "a photo of a dog.", "art of the dog"]
    assert prompts.fill("a {} shape.", "red") == "a red shape."
    with pytest.raises(UserError, match="does not exist"):
        prompts.user_prompts(None, tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_text("a photo of a cat\n")
    with pytest.raises(UserError, match="placeholder"):
        prompts.read_templates(tmp_path / "bad.txt")
    (tmp_path / "n.json").write_text(json.dumps({"task": "colour", "classnames": ["red", "blue"]}))
    (tmp_path / "tt.json").write_text(json.dumps({"task": "shape", "templates": ["a {c}."]}))
    with pytest.raises(UserError, match="same task"):
        prompts.user_prompts(None, tmp_path / "n.json", tmp_path / "tt.json")
    with pytest.raises(UserError, match="different tasks"):
        prompts.check_matching(prompts.synth_prompts("shape"), 12)


def test_shipped_imagenet_names_and_templates():
    names = prompts.imagenet_classnames()
    # OpenAI's list names two pairs of classes alike ("missile", "sunglasses"), as the original does.
    assert len(names) == 1000 and len(set(names)) == 998
    assert names[0] == "tench" and names[-1] == "toilet paper"
    assert len(prompts.openai_templates()) == 80


def _asset_file(name):
    from importlib import resources

    text = resources.files("vlscale.data").joinpath("assets", name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def test_shipped_synth_names_and_templates_are_what_the_tasks_use():
    from vlscale.data import synth_eval_sets, synth_scene, synth_tasks

    sizes = {"colour": 12, "shape": 8, "count": 9, "colour_shape": 96}
    default = synth_eval_sets.task_classnames(synth_scene.SynthConfig())
    for task, n in sizes.items():
        names, templates = _asset_file(f"synth_{task}_classnames.txt"), _asset_file(f"synth_{task}_templates.txt")
        assert len(names) == n == len(set(names)) and all("{c}" in t for t in templates), task
        assert synth_tasks.task_lists(task) == (names, tuple(templates))
        assert default[task] == (names if task != "count" else names[:4], tuple(templates)), task
        p = prompts.synth_prompts(task)  # what synth:<task> evaluates with
        assert list(p.classnames) == default[task][0] and p.templates == tuple(templates)
    assert _asset_file("synth_colour_shape_classnames.txt")[9] == "orange square"  # colour-major: 1 * 8 + 1
    tasks = synth_eval_sets.make_zeroshot_tasks(synth_scene.SynthConfig(image_size=16), 4, seed=0)
    assert tasks["colour"].classnames == _asset_file("synth_colour_classnames.txt")
    assert tasks["colour"].templates == _asset_file("synth_colour_templates.txt")
    assert tasks["colour"].prompts(2)[0] == "a photo of a yellow shape."
    # A run's knobs pick its subset of the files' names, in the run's order.
    sub = synth_scene.SynthConfig(colours=("blue", "red"), shapes=("star", "circle"), max_count=2)
    got = synth_eval_sets.task_classnames(sub)
    assert got["colour"][0] == ["blue", "red"] and got["count"][0] == ["a single shape", "two shapes"]
    assert got["colour_shape"][0] == ["blue star", "blue circle", "red star", "red circle"]
    assert prompts.synth_prompts("count", sub).classnames == ("a single shape", "two shapes")
    with pytest.raises(UserError, match="unknown synthetic task"):
        synth_tasks.task_lists("texture")


def _image(path, colour):
    Image.fromarray(np.full((40, 48, 3), colour, np.uint8)).save(path)


def test_folder_dataset_label_order_matching_and_corrupt_images(tmp_path):
    for cls, colour in (("golden_retriever", 10), ("tabby cat", 200)):
        (tmp_path / cls).mkdir()
        _image(tmp_path / cls / "a.png", colour)
    (tmp_path / "tabby cat" / "broken.jpg").write_bytes(b"not a jpeg")
    ds = datasets.open_dataset(f"folder:{tmp_path}", "zeroshot")
    assert ds.prompts.classnames == ("golden retriever", "tabby cat") and ds.labels.tolist() == [0, 1, 1]
    ds = file_sets.folder_dataset(str(tmp_path), ["tabby cat", "dog", "golden retriever"])
    assert ds.labels.tolist() == [2, 0, 0] and ds.name == tmp_path.name
    load = ds.loader(32)
    out = load(np.array([0, 1, 2, -1]))
    assert out["valid"].tolist() == [True, True, False, False]  # the broken file (index 2) is skipped, padding too
    assert out["image"].shape == (4, 32, 32, 3) and out["label"].tolist() == [2, 0, 0, -1]
    with pytest.raises(UserError, match="matches no class name"):
        file_sets.folder_dataset(str(tmp_path), ["tabby cat"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class sub-folders|no images"):
        datasets.open_dataset(f"folder:{tmp_path / 'empty'}", "zeroshot")


def test_karpathy_layout_split_and_name(tmp_path):
    (tmp_path / "val2014").mkdir()
    entries = []
    for i, split in enumerate(["test", "train", "test"]):
        _image(tmp_path / "val2014" / f"{i}.jpg", 50 * i)
        entries.append({"filepath": "val2014", "filename": f"{i}.jpg", "split": split,
                        "sentences": [{"raw": f"caption {i} {k}"} for k in range(5)]})
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": entries}))
    ds = datasets.open_dataset(f"karpathy:{tmp_path / 'dataset_coco.json'}:{tmp_path}", "retrieval")
    assert ds.name == "mscoco_captions" and ds.num_images == 2 and ds.captions[1][0] == "caption 2 0"
    assert file_sets.karpathy_dataset(f"{tmp_path / 'dataset_coco.json'}:{tmp_path}", split="train").num_images == 1
    with pytest.raises(UserError, match="no images in split"):
        file_sets.karpathy_dataset(f"{tmp_path / 'dataset_coco.json'}:{tmp_path}", split="val")


def test_spec_errors_and_names():
    with pytest.raises(UserError, match="dataset spec"):
        datasets.open_dataset("imagenet", "zeroshot")
    with pytest.raises(UserError, match="unknown synthetic"):
        datasets.open_dataset("synth:texture", "zeroshot")
    with pytest.raises(UserError, match="needs images with captions"):
        datasets.open_dataset("synth:colour", "retrieval", num_examples=12)
    assert datasets.dataset_name("tfds:imagenet2012:validation") == "imagenet1k"
    assert datasets.dataset_name("synth:colour") == "synth_colour"
    assert datasets.dataset_name("wds:/data/cifar10/{000..009}.tar") == "cifar10"


def test_tfds_dataset_that_is_not_prepared_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="not prepared .*tfds build"):
        datasets.open_dataset("tfds:mnist", "zeroshot", data_dir=str(tmp_path))


def test_padded_batches_count_every_example_once():
    from vlscale.runtime.sharding import make_mesh

    mesh = make_mesh()
    seen = []

    def load(idx):
        seen.append(idx.copy())
        return {"x": np.where(idx >= 0, idx, 0).astype(np.float32), "valid": idx % 7 != 3}

    out = batches.run_batched(lambda b: {"y": b["x"] * 2}, load, 37, 16, mesh)
    assert out["index"].tolist() == list(range(37))
    assert out["y"].tolist() == [2.0 * i for i in range(37)]
    assert out["valid"].tolist() == [i % 7 != 3 for i in range(37)]
    assert [len(s) for s in seen] == [16, 16, 16]


def test_tfds_classification_reads_labels_with_images_and_maps_wordnet_ids(monkeypatch):
    import io

    import tensorflow_datasets as tfds

    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(buf, format="PNG")
    records = [{"image": buf.getvalue(), "label": 3}, {"image": b"junk", "label": 5}]

    class Builder:  # the parts of a prepared tfds builder the reader uses
        def __init__(self, name, data_dir=None):
            label = SimpleNamespace(names=[f"n{i:08d}" for i in range(1000)])
            self.info = SimpleNamespace(splits={"validation": None, "train": None}, features={"label": label})

        def is_prepared(self):
            return True

        def as_data_source(self, split, decoders=None):
            assert split == "validation" and "image" in decoders  # images stay encoded; PIL decodes them
            return records

    monkeypatch.setattr(tfds, "builder", Builder)
    ds = datasets.open_dataset("tfds:imagenet2012", "zeroshot", data_dir="/nowhere")
    assert ds.name == "imagenet1k" and ds.num_classes == 1000 and ds.prompts.classnames[0] == "tench"
    out = ds.loader(32)(np.array([0, 1, -1, -1]))
    assert out["valid"].tolist() == [True, False, False, False] and out["label"][:2].tolist() == [3, 5]


def test_shipped_imagenet_a_and_r_subsets():
    names = prompts.imagenet_classnames()
    a, r = prompts.imagenet_subset_indices("imagenet-a"), prompts.imagenet_subset_indices("imagenet-r")
    for idx in (a, r):
        assert len(idx) == len(set(idx)) == 200 and idx == sorted(idx) and 0 <= idx[0] and idx[-1] < 1000
    # Spot values checked against hendrycks/natural-adv-examples (eval.py), hendrycks/imagenet-r (eval.py) and the
    # WordNet-id lists of LAION-AI/CLIP_benchmark (datasets/builder.py) mapped through ImageNet-1k's label order.
    assert a[:5] == [6, 11, 13, 15, 17] and a[-3:] == [986, 987, 988] and a[100] == 496
    assert r[:5] == [1, 2, 4, 6, 8] and r[-3:] == [981, 983, 988] and r[100] == 355
    assert len(set(a) & set(r)) == 86
    got_a, got_r = prompts.imagenet_subset_classnames("imagenet-a"), prompts.imagenet_subset_classnames("imagenet-r")
    assert got_a == [names[i] for i in a] and got_r == [names[i] for i in r]
    assert (got_a[0], got_a[100], got_a[-1]) == ("stingray", "Christmas stocking", "acorn")
    assert (got_r[0], got_r[100], got_r[-2]) == ("goldfish", "llama", "scuba diver")
    with pytest.raises(UserError, match="no shipped ImageNet class subset"):
        prompts.imagenet_subset_indices("imagenet-c")


def test_tfds_imagenet_a_classifies_among_its_200_classes(monkeypatch):
    import io

    import tensorflow_datasets as tfds

    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    # TFDS labels ImageNet-A in ImageNet-1k's label space: 6 (stingray) and 988 (acorn) are its first and last class.
    records = [{"image": png, "label": 6}, {"image": png, "label": 988}, {"image": png, "label": 0}]

    class Builder:
        def __init__(self, name, data_dir=None):
            label = SimpleNamespace(names=[f"n{i:08d}" for i in range(1000)])
            self.info = SimpleNamespace(splits={"test": None}, features={"label": label})

        def is_prepared(self):
            return True

        def as_data_source(self, split, decoders=None):
            return records

    monkeypatch.setattr(tfds, "builder", Builder)
    ds = datasets.open_dataset("tfds:imagenet_a", "zeroshot", data_dir="/nowhere")
    assert ds.name == "imagenet-a" and ds.num_classes == 200
    assert list(ds.prompts.classnames) == prompts.imagenet_subset_classnames("imagenet-a")
    out = ds.loader(32)(np.array([0, 1, 2, -1]))
    # Class 0 (tench) is not one of ImageNet-A's: that image is counted as skipped, not scored.
    assert out["label"].tolist() == [0, 199, -1, -1] and out["valid"].tolist() == [True, True, False, False]
    r = datasets.open_dataset("tfds:imagenet_r", "zeroshot", data_dir="/nowhere")
    assert r.name == "imagenet-r" and r.num_classes == 200 and r.prompts.classnames[0] == "goldfish"
    assert r.loader(32)(np.array([0, 1, 2, -1]))["label"].tolist() == [3, 199, -1, -1]  # 6 (stingray) is R's 4th class


def test_a_subset_classifier_is_the_columns_of_the_imagenet_one(monkeypatch):
    from vlscale.eval import runner, zeroshot

    calls = []

    def build(em, p, batch_size):  # a class's column depends on its prompts only, as in the real classifier
        calls.append(len(p.classnames))
        return np.array([[len(c), ord(c[0]), ord(c[-1])] for c in p.classnames], np.float32).T

    monkeypatch.setattr(zeroshot, "build_classifier", build)
    cache = runner._Classifiers()
    templates = tuple(prompts.openai_templates())
    full = cache.get(None, prompts.Prompts(tuple(prompts.imagenet_classnames()), templates), 8)
    sub = cache.get(None, prompts.Prompts(tuple(prompts.imagenet_subset_classnames("imagenet-r")), templates), 8)
    assert calls == [1000] and sub.shape == (3, 200)
    assert np.array_equal(sub, full[:, prompts.imagenet_subset_indices("imagenet-r")])
    cache.get(None, prompts.Prompts(("tench", "goldfish"), ("a {c}.",)), 8)  # other templates: built anew
    assert calls == [1000, 2]


def test_eval_uses_the_trainers_persistent_compilation_cache_with_a_lower_threshold(tmp_path, monkeypatch):
    import jax

    from vlscale.eval import runner

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv("VLSCALE_COMPILATION_CACHE", "none")
        assert runner.use_compilation_cache() is None and not jax.config.jax_compilation_cache_dir
        monkeypatch.setenv("VLSCALE_COMPILATION_CACHE", str(tmp_path / "jax"))
        assert runner.use_compilation_cache() == str(tmp_path / "jax") == jax.config.jax_compilation_cache_dir
        assert jax.config.jax_persistent_cache_min_compile_time_secs == runner.EVAL_MIN_COMPILE_S
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "trainer"))  # one set up already: kept
        assert runner.use_compilation_cache() == str(tmp_path / "trainer")
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])


def _class_folders(root, names, images=("a.png",)):
    root.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        (root / n).mkdir()
        for img in images:
            _image(root / n / img, (37 * i) % 256)
    return root


def test_folders_named_by_wordnet_id_are_imagenet_classes(tmp_path):
    wnids = prompts.imagenet_wnids()
    assert len(wnids) == 1000 == len(set(wnids)) and wnids == sorted(wnids) and wnids[0] == "n01440764"
    names = prompts.imagenet_classnames()
    # A part of ImageNet-1k (val unpacked by WordNet id): scored among all 1000 classes.
    ds = file_sets.folder_dataset(str(_class_folders(tmp_path / "val", [wnids[5], wnids[0], wnids[999]])))
    assert ds.num_classes == 1000 and ds.prompts.classnames[0] == names[0] == "tench"
    assert ds.labels.tolist() == [0, 5, 999] and ds.name == "val"
    # Exactly ImageNet-R's 200 classes (its tar unpacks this way): its own 200 classes, in its label order.
    r_idx = prompts.imagenet_subset_indices("imagenet-r")
    root = _class_folders(tmp_path / "renditions", [wnids[i] for i in r_idx], images=())
    _image(root / wnids[r_idx[0]] / "x.png", 1)
    _image(root / wnids[r_idx[199]] / "y.png", 2)
    ds = file_sets.folder_dataset(str(root))
    assert ds.num_classes == 200 and ds.labels.tolist() == [0, 199]
    assert list(ds.prompts.classnames) == prompts.imagenet_subset_classnames("imagenet-r")
    # A part of ImageNet-A's classes in a folder named imagenet-a: still ImageNet-A's 200-class benchmark.
    a_idx = prompts.imagenet_subset_indices("imagenet-a")
    ds = datasets.open_dataset(f"folder:{_class_folders(tmp_path / 'imagenet-a', [wnids[a_idx[3]], wnids[a_idx[0]]])}",
                               "zeroshot")
    assert ds.num_classes == 200 and ds.labels.tolist() == [0, 3]
    # 1000 names of the user's, in ImageNet's label order, are matched by WordNet id too.
    own = [f"class {i}" for i in range(1000)]
    ds = file_sets.folder_dataset(str(tmp_path / "val"), own)
    assert ds.labels.tolist() == [0, 5, 999] and ds.prompts.classnames[5] == "class 5"
    _class_folders(tmp_path / "odd", ["n99999999"])
    with pytest.raises(UserError, match="n99999999.*no ImageNet-1k class"):
        file_sets.folder_dataset(str(tmp_path / "odd"))


def test_folders_named_by_label_index_need_names_or_imagenetv2(tmp_path):
    root = _class_folders(tmp_path / "imagenetv2-matched-frequency-format-val", ["0", "10", "999"])
    ds = file_sets.folder_dataset(str(root))
    assert ds.num_classes == 1000 and ds.labels.tolist() == [0, 10, 999]
    assert ds.prompts.classnames[999] == prompts.imagenet_classnames()[999]
    other = _class_folders(tmp_path / "digits", ["0", "1", "2"])
    with pytest.raises(UserError, match="label indices.*--classnames"):
        file_sets.folder_dataset(str(other))
    assert file_sets.folder_dataset(str(other), ["zero", "one", "two", "three"]).labels.tolist() == [0, 1, 2]
    assert file_sets.folder_dataset(str(other), name="imagenetv2").num_classes == 1000
    with pytest.raises(UserError, match="'2' is past the 2 class names"):
        file_sets.folder_dataset(str(other), ["zero", "one"])


def test_classnames_may_repeat_but_a_folder_must_match_a_unique_one(tmp_path):
    shipped = tmp_path / "imagenet.txt"
    shipped.write_text("\n".join(prompts.imagenet_classnames()))
    names, _ = prompts.read_classnames(shipped)  # OpenAI's list repeats "missile" and "sunglasses"
    assert len(names) == 1000 and names.count("missile") == 2
    root = _class_folders(tmp_path / "val", [prompts.imagenet_wnids()[657]])
    assert file_sets.folder_dataset(str(root), names).labels.tolist() == [657]  # by WordNet id: fine
    _class_folders(tmp_path / "named", ["missile"])
    with pytest.raises(UserError, match="'missile' matches a class name that --classnames lists twice"):
        file_sets.folder_dataset(str(tmp_path / "named"), ["missile", "tank", "missile"])
