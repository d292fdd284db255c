"""Decoded eval images are kept across checkpoints: each image is decoded once per process (and once per machine with
a cache folder), a changed file is decoded again, and the metrics are those of an uncached evaluation."""

import io
import os
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.eval.conftest import BATCH, make_workdir
from vlscale.eval import datasets, evaluate_run, image_cache
from vlscale.models import transforms

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    """Each test starts as a new process would: nothing memoised, no cache folder unless it sets one."""
    monkeypatch.delenv(image_cache.CACHE_ENV, raising=False)
    image_cache.clear_memo()
    yield
    image_cache.clear_memo()


@pytest.fixture
def decodes(monkeypatch):
    """Counts the image files and byte strings decoded (the loader every dataset kind reads images with)."""
    calls = []
    real = transforms.load_image

    def counting(src, *a, **kw):
        calls.append(src if isinstance(src, str) else "<bytes>")
        return real(src, *a, **kw)

    monkeypatch.setattr(transforms, "load_image", counting)
    return calls


def make_folder(root, per_class=5, corrupt=True):
    rng = np.random.default_rng(0)
    for cls, colour in COLOURS.items():
        (root / cls).mkdir(parents=True)
        for k in range(per_class):
            noise = rng.integers(-40, 40, (44 + k, 52, 3))
            Image.fromarray(np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)).save(root / cls / f"{k}.png")
    if corrupt:
        (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return root


def evaluate_three_checkpoints(tmp_path, clip_ckpt, folder, tag):
    """A const run with 3 kept checkpoints past warm-up, all evaluated on the folder in one process."""
    w = make_workdir(tmp_path / f"run_{tag}", clip_ckpt, "tiny-clip", schedule="const", steps=(10, 20, 30), warmup=0)
    return evaluate_run(w, [("zeroshot", f"folder:{folder}"), ("retrieval", "synth:retrieval", {"num_examples": 16})],
                        batch_size=BATCH, log=lambda m: None)


def test_three_checkpoints_decode_each_image_once_with_the_same_metrics(tmp_path, clip_ckpt, decodes, monkeypatch):
    folder = make_folder(tmp_path / "pets")
    files = 16  # 15 images and one undecodable file
    cached = evaluate_three_checkpoints(tmp_path, clip_ckpt, folder, "cached")
    assert len(decodes) == files and sorted(set(decodes)) == sorted(decodes)  # every file once, none twice
    monkeypatch.setenv(image_cache.CACHE_ENV, "none")
    del decodes[:]
    plain = evaluate_three_checkpoints(tmp_path, clip_ckpt, folder, "plain")
    assert len(decodes) == 3 * files
    zs_cached = [r for r in cached if r["task"] == "zeroshot"]
    zs_plain = [r for r in plain if r["task"] == "zeroshot"]
    assert [r["step"] for r in zs_cached] == [10, 20, 30]
    assert [(r["metrics"], r["skipped_images"], r["num_images"]) for r in zs_cached] == \
        [(r["metrics"], r["skipped_images"], r["num_images"]) for r in zs_plain]
    assert zs_cached[0]["skipped_images"] == 1 and zs_cached[0]["num_images"] == 15


def test_cached_pixels_equal_the_eval_transform_bit_for_bit(tmp_path):
    folder = make_folder(tmp_path / "pets")
    ds = datasets.open_dataset(f"folder:{folder}", "zeroshot")
    idx = np.array([0, 5, 3, -1, 9, 14, 2, -1])
    first = ds.loader(32)(idx)  # decodes
    again = datasets.open_dataset(f"folder:{folder}", "zeroshot").loader(32)(idx)  # another checkpoint: cached
    paths = sorted(str(p) for c in COLOURS for p in (folder / c).iterdir())
    order = [p for c in sorted(COLOURS) for p in paths if f"/{c}/" in p]  # the dataset's row order
    for out in (first, again):
        for r, i in enumerate(idx):
            if i < 0 or order[i].endswith("broken.jpg"):
                assert not out["valid"][r] and not out["image"][r].any()
            else:
                want = transforms.eval_transform(transforms.load_image(order[i]), 32)
                assert out["valid"][r] and np.array_equal(out["image"][r], want)
    assert all(np.array_equal(first[k], again[k]) for k in first)


def test_cache_folder_serves_a_new_process_and_a_changed_file_is_decoded_again(tmp_path, clip_ckpt, decodes,
                                                                                 monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(image_cache.CACHE_ENV, str(cache))
    folder = make_folder(tmp_path / "pets", corrupt=False)
    spec = f"folder:{folder}"
    idx = np.arange(16) - 1  # -1 (padding) then rows 0..14
    first = datasets.open_dataset(spec, "zeroshot").loader(32)(idx)
    assert len(decodes) == 15
    written = sorted(p.name for p in cache.iterdir())
    assert len(written) == 2 and written[0].endswith(".npy") and written[1].endswith(".npz")  # no partial file left
    image_cache.clear_memo()  # a new process: reads the folder, decodes nothing
    again = datasets.open_dataset(spec, "zeroshot").loader(32)(idx)
    assert len(decodes) == 15 and all(np.array_equal(first[k], again[k]) for k in first)

    # Replace one image under the same path: the set is a new key, decoded again, and the new pixels are used.
    changed = folder / "blue" / "0.png"
    Image.fromarray(np.full((40, 40, 3), 250, np.uint8)).save(changed)
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later mtime even on coarse clocks
    image_cache.clear_memo()
    third = datasets.open_dataset(spec, "zeroshot").loader(32)(idx)
    assert len(decodes) == 30 and len(list(cache.glob("*.npy"))) == 2
    row = 1 + 0  # blue is the first class in sorted order; its 0.png is row 0, batch position 1
    assert np.array_equal(third["image"][row], transforms.eval_transform(Image.open(changed), 32))
    assert not np.array_equal(third["image"][row], first["image"][row])
    assert all(np.array_equal(third["image"][r], first["image"][r]) for r in range(2, 16))


def test_a_set_larger_than_the_memo_is_decoded_per_checkpoint_without_a_cache_folder(tmp_path, decodes,
                                                                                     monkeypatch):
    folder = make_folder(tmp_path / "pets", corrupt=False)
    monkeypatch.setattr(image_cache, "MEMO_BYTES", 15 * 32 * 32 * 3 - 1)  # one byte short of the set at 32 px
    for _ in range(2):
        datasets.open_dataset(f"folder:{folder}", "zeroshot").loader(32)(np.arange(15))
    assert len(decodes) == 30
    monkeypatch.setattr(image_cache, "MEMO_BYTES", 15 * 32 * 32 * 3)
    for _ in range(2):
        datasets.open_dataset(f"folder:{folder}", "zeroshot").loader(32)(np.arange(15))
    assert len(decodes) == 45
    # Another image size is another entry.
    datasets.open_dataset(f"folder:{folder}", "zeroshot").loader(24)(np.arange(15))
    assert len(decodes) == 60


def test_tfds_labels_read_with_the_images_are_cached_with_them(tmp_path, decodes, monkeypatch):
    import tensorflow_datasets as tfds

    def png(v):
        buf = io.BytesIO()
        Image.fromarray(np.full((40, 40, 3), v, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    records = [{"image": png(90), "label": 3}, {"image": b"junk", "label": 5}, {"image": png(10), "label": 7}]
    prepared = tmp_path / "cifar10" / "3.0.2"
    prepared.mkdir(parents=True)
    (prepared / "cifar10-test.array_record-00000-of-00001").write_bytes(b"records")

    class Builder:  # a prepared builder with its version folder, as tfds.builder returns
        def __init__(self, name, data_dir=None):
            self.data_dir = str(prepared)
            self.info = SimpleNamespace(splits={"test": None},
                                        features={"label": SimpleNamespace(names=[f"c{i}" for i in range(10)])})

        def is_prepared(self):
            return True

        def as_data_source(self, split, decoders=None):
            return records

    monkeypatch.setattr(tfds, "builder", Builder)
    idx = np.array([0, 1, 2, -1])
    outs = [datasets.open_dataset("tfds:cifar10", "zeroshot", data_dir=str(tmp_path)).loader(32)(idx) for _ in range(2)]
    assert len(decodes) == 3  # the second checkpoint decodes nothing
    for out in outs:
        assert out["label"].tolist() == [3, 5, 7, -1] and out["valid"].tolist() == [True, False, True, False]
    assert np.array_equal(outs[0]["image"], outs[1]["image"])


def test_sources_name_the_spec_and_the_files_and_object_storage_has_none(tmp_path):
    assert image_cache.source_of_files("wds:gs://bucket/shards", ["gs://bucket/shards/0.tar"]) is None
    assert image_cache.lookup(None, 10, 32) is None
    f = tmp_path / "a.png"
    missing = image_cache.source_of_files("folder:x", [f])
    assert missing != image_cache.source_of_files("folder:y", [f])  # the spec is part of it
    f.write_bytes(b"x")
    assert image_cache.source_of_files("folder:x", [f]) != missing  # a file that appears is a new source
