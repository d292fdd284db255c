"""Image-folder and TFDS sources feed the same pipeline as shards."""

import json

import numpy as np
import pytest
from PIL import Image

from vlscale.data import folder, iterator, synth
from vlscale.errors import UserError
from vlscale.models import tokenizer as tokenizer_lib

from .conftest import TINY, make_config


@pytest.fixture()
def image_folder(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(6):
        Image.fromarray(synth.generate(TINY, 0, "train", i)["image"]).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "img" / "empty.png").write_bytes(b"")
    rows = [(f"img/{i}.png", f"caption number {i}") for i in range(6)]
    rows += [("img/missing.png", "no such file"), ("img/empty.png", "zero bytes"), ("img/0.png", "")]
    with open(tmp_path / "captions.csv", "w") as f:
        f.write("image_path,caption\n" + "".join(f"{p},{c}\n" for p, c in rows))
    with open(tmp_path / "captions.jsonl", "w") as f:
        for p, c in rows:
            f.write(json.dumps({"image_path": p, "caption": c}) + "\n")
        f.write("{not json\n")
    return tmp_path


@pytest.mark.parametrize("name", ["captions.csv", "captions.jsonl"])
def test_folder_source_reads_good_rows_and_counts_bad_ones(image_folder, name):
    config = make_config("folder", num_epochs=1, train=False, batch_size=2, drop_remainder=False,
                         **{"folder.captions_file": str(image_folder / name)})
    with iterator.make_iterator(config) as it:
        rows = {tuple(r) for b in it for r in b["text"]}
        m = it.metrics()
    tok = tokenizer_lib.get_tokenizer(16)
    assert rows == {tuple(tok(f"caption number {i}")[0]) for i in range(6)}
    assert m["data/bad/missing_image"] == 1
    # The JSONL line that does not parse keeps its slot and is counted (captions are checked first).
    assert m["data/bad/missing_caption"] == (1 if name.endswith("jsonl") else 0)
    assert m["data/bad/empty_image"] == 1 and m["data/bad/empty_caption"] == 1


def test_folder_source_names_a_bad_captions_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        folder.FolderCaptionSource(str(tmp_path / "nope.csv"))
    (tmp_path / "c.csv").write_text("path,caption\na.png,x\n")
    with pytest.raises(UserError, match="no 'image_path' column"):
        folder.FolderCaptionSource(str(tmp_path / "c.csv"))


def _prepare_tiny_tfds(data_dir):
    """A locally generated TFDS dataset in array_record format (no network, no TensorFlow)."""
    import tensorflow_datasets as tfds

    class TinyCaptionedShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        url_infos = None  # nothing to download; skips tfds' checksum-file lookup beside the builder's code

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=["red_circle", "blue_square", "green_star"]),
                "caption": tfds.features.Text(),
            }))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(9)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": synth.generate(TINY, 0, "train", i)["image"], "label": i % 3,
                          "caption": f"tfds caption {i}"}

    TinyCaptionedShapes(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return "tiny_captioned_shapes"


def test_tfds_source_by_label_template_and_by_caption(tmp_path):
    name = _prepare_tiny_tfds(tmp_path)
    tok = tokenizer_lib.get_tokenizer(16)
    by_label = make_config("tfds", num_epochs=1, train=False, batch_size=3, shuffle=False,
                           **{"tfds.name": name, "tfds.data_dir": str(tmp_path)})
    with iterator.make_iterator(by_label) as it:
        rows = [tuple(r) for b in it for r in b["text"]]
    classes = ["red circle", "blue square", "green star"]
    assert sorted(rows) == sorted(tuple(tok(f"a photo of a {c}.")[0]) for c in classes for _ in range(3))
    by_caption = make_config("tfds", num_epochs=1, train=False, batch_size=9, process_index=1, process_count=3,
                             **{"tfds.name": name, "tfds.data_dir": str(tmp_path), "tfds.caption_key": "caption"})
    with iterator.make_iterator(by_caption) as it:
        batch = next(it)
    assert batch["image"].shape == (3, 32, 32, 3)
    captions = {tuple(tok(f"tfds caption {i}")[0]) for i in range(9)}
    assert {tuple(r) for r in batch["text"]} <= captions


def test_tfds_source_names_a_missing_dataset(tmp_path):
    config = make_config("tfds", **{"tfds.name": "no_such_dataset_here", "tfds.data_dir": str(tmp_path)})
    with pytest.raises(UserError, match="prepare it there"):
        iterator.make_iterator(config)
