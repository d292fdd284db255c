"""`vlscale eval --dataset tfds:NAME[:split]` on real, locally prepared TFDS datasets (array_record, no TensorFlow).

The builders below are ordinary ``GeneratorBasedBuilder``s with an encoded ``tfds.features.Image`` and a
``ClassLabel`` like the catalog's image datasets. Their examples give the image as a path to an encoded file, as
the catalog's builders give encoded files (ImageNet's: each JPEG's file object from its archive): TFDS stores
those bytes unchanged, without TensorFlow, whereas an ``np.ndarray`` image would be encoded with
``tf.image.encode_png`` / ``encode_jpeg``
(tensorflow_datasets/core/features/image_feature.py, ``_ENCODE_FN``) and fails with "No module named 'tensorflow'".
The same files, laid out as ``DIR/<class>/<image>``, are the ``folder:`` reference, so both specs score the same
bytes. The builders are defined under ``skip_registration``: the CLI finds the datasets from ``--data-dir`` alone,
as a process that did not build them does.
"""

import json

import numpy as np
import pytest
from PIL import Image

from vlscale.cli import main

# Human-readable ClassLabel names, deliberately not in sorted order: the folder spec numbers its classes by sorted
# folder name, so equal metrics also check that each record's label is read against the right class name.
CLASSES = ["red_circle", "blue_square", "green_triangle", "yellow_star", "purple_cross", "orange_ring", "white_dot"]
# Unequal class sizes: a random-init model ranks the classes nearly the same for every image, so with balanced
# classes any permutation of the class names would give the same metrics. 28 test images: two padded batches of 16.
COUNTS = (4, 1, 3, 6, 2, 5, 7)
BATCH = "16"
NAME = "tiny_labelled_shapes"


def _write_images(root):
    """``root/<class>/<k>.{png,jpg}``: noise of several sizes, PNG and JPEG, one greyscale JPEG (ImageNet has some)."""
    rng = np.random.default_rng(0)
    files = {}
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        for k in range(COUNTS[c]):
            h, w = 30 + 4 * (k % 3), 44 - 3 * c
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            pixels[..., c % 3] //= 3  # a class-dependent colour cast, so the logits are not all alike
            img = Image.fromarray(pixels)
            if c == 2 and k == 0:  # saved as .jpg
                img = img.convert("L")
            path = root / cls / (f"{k}.png" if (c + k) % 2 else f"{k}.jpg")
            img.save(path)
            files[(cls, k)] = path
    return files


def _builders():
    import tensorflow_datasets as tfds

    class TinyLabelledShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        url_infos = None  # nothing to download; skips tfds' checksum-file lookup beside the builder's code

        def __init__(self, files, **kw):
            self.files = files
            super().__init__(**kw)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=CLASSES),
                "file_name": tfds.features.Text(),
            }))

        def _split_generators(self, dl_manager):
            train = [key for key in self.files if key[1] == 0][:2]
            return {"train": self._generate_examples(train), "test": self._generate_examples(list(self.files))}

        def _generate_examples(self, keys):
            for cls, k in keys:
                path = self.files[(cls, k)]
                yield f"{cls}/{k}", {"image": path, "label": cls, "file_name": path.name}

    class TinyUnlabelledShapes(TinyLabelledShapes):  # an integer 'label' that is not a ClassLabel
        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.Tensor(shape=(), dtype=np.int64),
                "file_name": tfds.features.Text(),
            }))

        def _generate_examples(self, keys):
            for key, ex in super()._generate_examples(keys):
                yield key, {**ex, "label": CLASSES.index(ex["label"])}

    return TinyLabelledShapes, TinyUnlabelledShapes


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(data dir holding both datasets in array_record format, the same images as a folder: dataset)."""
    from tensorflow_datasets.core import registered

    root = tmp_path_factory.mktemp("tfds")
    files = _write_images(root / "images")
    with registered.skip_registration():
        labelled, unlabelled = _builders()
    for cls in (labelled, unlabelled):
        cls(files, data_dir=str(root / "data"), file_format="array_record").download_and_prepare()
    return root / "data", root / "images"


def run(capsys, *argv):
    rc = main(["eval", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_tfds_zeroshot_cli_equals_the_same_images_as_a_folder(prepared, clip_ckpt, tmp_path, capsys, monkeypatch):
    from vlscale.eval import evaluate_checkpoint

    data_dir, images = prepared
    rc, out, err = run(capsys, "--checkpoint", str(clip_ckpt), "--task", "zeroshot", "--dataset",
                       f"tfds:{NAME}:test", "--data-dir", str(data_dir), "--out", str(tmp_path / "out"),
                       "--batch-size", BATCH)
    assert rc == 0, err
    assert f"{NAME} (zeroshot): acc1=" in out and "skipped" not in out
    doc = json.loads((tmp_path / "out" / f"zeroshot_{NAME}.json").read_text())
    assert {"dataset", "model", "task", "metrics", "skipped_images", "num_images", "checkpoint", "step",
            "samples_seen", "precision"} <= set(doc)
    assert doc["dataset"] == NAME and doc["task"] == "zeroshot" and doc["model"] == "tiny-clip"
    assert doc["num_images"] == sum(COUNTS) and doc["skipped_images"] == 0
    assert set(doc["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}

    [ref] = evaluate_checkpoint(clip_ckpt, [("zeroshot", f"folder:{images}")], out_dir=tmp_path / "ref",
                                batch_size=int(BATCH), log=lambda msg: None)
    assert ref["num_images"] == doc["num_images"] and ref["skipped_images"] == 0
    for metric, value in ref["metrics"].items():
        assert doc["metrics"][metric] == pytest.approx(value, abs=1e-6), metric
    assert 0 < doc["metrics"]["acc5"] < 1  # 7 classes: top-5 is not trivially 1

    # The split also comes from --split; without either, the default (no validation split here: test).
    rc, _, err = run(capsys, "--checkpoint", str(clip_ckpt), "--task", "zeroshot", "--dataset", f"tfds:{NAME}",
                     "--split", "train", "--data-dir", str(data_dir), "--out", str(tmp_path / "train"),
                     "--batch-size", BATCH)
    assert rc == 0, err
    assert json.loads((tmp_path / "train" / f"zeroshot_{NAME}.json").read_text())["num_images"] == 2
    # The test split again, as a later checkpoint: its images were kept (vlscale.eval.image_cache), none is decoded.
    from vlscale.models import transforms

    decoded, load_image = [], transforms.load_image
    monkeypatch.setattr(transforms, "load_image", lambda src, *a, **k: decoded.append(1) or load_image(src, *a, **k))
    rc, _, err = run(capsys, "--checkpoint", str(clip_ckpt), "--task", "zeroshot", "--dataset", f"tfds:{NAME}",
                     "--data-dir", str(data_dir), "--out", str(tmp_path / "default"), "--batch-size", BATCH)
    assert rc == 0, err
    default = json.loads((tmp_path / "default" / f"zeroshot_{NAME}.json").read_text())
    assert default["num_images"] == doc["num_images"] and default["metrics"] == doc["metrics"]
    assert decoded == []


@pytest.mark.parametrize("case", ["catalog_not_prepared", "custom_not_prepared", "no_such_split", "split_conflict",
                                  "no_classlabel"])
def test_tfds_bad_input_is_one_line_error(prepared, clip_ckpt, tmp_path, capsys, case):
    data_dir, _ = prepared
    dataset, where, extra = f"tfds:{NAME}:test", data_dir, []
    if case == "catalog_not_prepared":  # a catalog dataset that was never built here
        dataset, where = "tfds:cifar10", tmp_path
    elif case == "custom_not_prepared":  # built in another data dir than the one given
        where = tmp_path
    elif case == "no_such_split":
        dataset = f"tfds:{NAME}:validation"
    elif case == "split_conflict":
        extra = ["--split", "train"]
    else:
        dataset = "tfds:tiny_unlabelled_shapes:test"
    expect = {"catalog_not_prepared": ["tfds:cifar10", "not prepared", "tfds build cifar10", str(tmp_path)],
              "custom_not_prepared": [f"tfds:{NAME}", "not prepared", "tfds build", str(tmp_path)],
              "no_such_split": [f"tfds:{NAME}", "no split 'validation'", "train, test"],
              "split_conflict": [f"tfds:{NAME}:test", "--split train"],
              "no_classlabel": ["tfds:tiny_unlabelled_shapes", "ClassLabel feature 'label'"]}[case]
    rc, out, err = run(capsys, "--checkpoint", str(clip_ckpt), "--task", "zeroshot", "--dataset", dataset,
                       "--data-dir", str(where), "--out", str(tmp_path / "out"), "--batch-size", BATCH, *extra)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out, err
    assert all(s in err for s in expect), err
    assert not (tmp_path / "out").exists()
