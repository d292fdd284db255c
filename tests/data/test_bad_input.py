"""Each kind of bad input is skipped, counted by reason, and stops the run only above the bad fraction."""

import io
import logging
import tarfile

import numpy as np
import pytest

from vlscale.data import iterator, samples, synth, synth_shards, webdataset

from .conftest import TINY, make_config


def _jpeg(i):
    return synth_shards.encode_image(synth.generate(TINY, 0, "train", i)["image"])


def _write(path, samples_):
    with tarfile.open(path, "w") as tar:
        for key, fields in samples_:
            webdataset.write_tar_sample(tar, key, fields)


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory):
    """Two shards with one of each bad sample among good ones, a truncated tar and an unopenable shard."""
    d = tmp_path_factory.mktemp("bad")
    good = [(f"g{i:03d}", {"jpg": _jpeg(i), "txt": f"good caption {i}"}) for i in range(12)]
    planted = [
        ("corrupt", {"jpg": b"\xff\xd8\xff\xe0 definitely not a jpeg", "txt": "corrupt"}),
        ("halfjpeg", {"jpg": _jpeg(99)[:300], "txt": "a truncated jpeg"}),
        ("zerobyte", {"jpg": b"", "txt": "zero-byte image"}),
        ("noimage", {"txt": "a caption without image"}),
        ("nocaption", {"jpg": _jpeg(98)}),
        ("emptycaption", {"jpg": _jpeg(97), "txt": "  \n "}),
        ("badutf8", {"jpg": _jpeg(96), "txt": b"caf\xe9 \xff\xfe"}),
    ]
    _write(d / "00000.tar", good[:6] + planted[:4] + good[6:8])
    _write(d / "00001.tar", planted[4:] + good[8:10])
    # A tar that ends in the middle of its third sample's image.
    full = io.BytesIO()
    with tarfile.open(fileobj=full, mode="w") as tar:
        for key, fields in good[10:12] + [("lost", {"jpg": _jpeg(95), "txt": "lost"})]:
            webdataset.write_tar_sample(tar, key, fields)
    raw = full.getvalue()
    (d / "00002.tar").write_bytes(raw[: 4 * 512 + len(good[10][1]["jpg"]) + 1536 + 300 + len(good[11][1]["jpg"]) + 900])
    (d / "00003.tar").write_bytes(b"this is not a tar file at all" * 3)
    return d


def test_tar_reader_reports_truncation_and_unreadable_shards(bad_shards, caplog):
    recs = list(webdataset.iter_tar_samples(str(bad_shards / "00002.tar")))
    assert [r["__key__"] for r in recs if "__bad__" not in r][:2] == ["g010", "g011"]
    assert recs[-1]["__bad__"] == "truncated_tar"
    with caplog.at_level(logging.WARNING):
        recs = list(webdataset.iter_tar_samples(str(bad_shards / "00003.tar")))
    assert recs == [{"__bad__": "unreadable_shard", "__url__": str(bad_shards / "00003.tar"), "__key__": ""}]
    assert "00003.tar" in caplog.text


def test_decode_record_names_each_reason():
    ok = {"jpg": _jpeg(0), "txt": b"fine"}
    image, caption = samples.decode_record(ok)
    assert image.mode == "RGB" and image.size == (32, 32) and caption == "fine"
    assert samples.decode_record({"jpg": _jpeg(0), "json": b'{"caption": "from json"}'})[1] == "from json"
    cases = {
        "corrupt_image": {"jpg": b"garbage", "txt": b"x"},
        "empty_image": {"png": b"", "txt": b"x"},
        "missing_image": {"txt": b"x"},
        "missing_caption": {"jpg": _jpeg(0)},
        "empty_caption": {"jpg": _jpeg(0), "txt": b"\t "},
        "bad_utf8": {"jpg": _jpeg(0), "txt": b"\xc3\x28"},
        "truncated_tar": {"__bad__": "truncated_tar"},
    }
    for reason, rec in cases.items():
        with pytest.raises(samples.BadSample) as e:
            samples.decode_record(rec)
        assert e.value.reason == reason


def test_pipeline_skips_and_counts_every_kind(bad_shards, caplog):
    config = make_config(shards=str(bad_shards), num_epochs=1, shuffle=False, train=False, batch_size=2,
                         drop_remainder=False)
    with caplog.at_level(logging.WARNING), iterator.make_iterator(config) as it:
        batches = list(it)
        metrics = it.metrics()
    tokens = np.concatenate([b["text"] for b in batches])
    assert len(tokens) == 12  # exactly the good samples, each once
    counts = {r: metrics[f"data/bad/{r}"] for r in samples.BAD_REASONS}
    assert counts == {"unreadable_shard": 1, "truncated_tar": 1, "missing_image": 1, "empty_image": 1,
                      "corrupt_image": 2, "missing_caption": 1, "empty_caption": 1, "bad_utf8": 1,
                      "transform_error": 0}
    assert metrics["data/samples_good"] == 12
    assert metrics["data/bad_fraction"] == pytest.approx(8 / 20)
    assert "skipping bad sample (corrupt_image)" in caplog.text


def test_bad_fraction_above_the_limit_stops_with_a_clear_error(bad_shards):
    config = make_config(shards=str(bad_shards), num_epochs=1, shuffle=False, train=False, batch_size=2,
                         max_bad_fraction=0.01, bad_fraction_min_samples=10)
    with iterator.make_iterator(config) as it, pytest.raises(samples.BadDataError, match="above the limit of 1.00%"):
        list(it)


def test_all_bad_input_stops_instead_of_spinning(tmp_path):
    _write(tmp_path / "00000.tar", [(f"k{i}", {"jpg": b"junk", "txt": "x"}) for i in range(5)])
    config = make_config(shards=str(tmp_path), max_consecutive_bad=20)  # endless repeat of an all-bad shard
    with iterator.make_iterator(config) as it, pytest.raises(samples.BadDataError, match="in a row were bad"):
        next(it)


def test_warnings_are_rate_limited(caplog):
    warner = samples.RateLimitedWarner(interval_s=3600)
    with caplog.at_level(logging.WARNING):
        logged = [warner.warn("corrupt_image", f"file {i}") for i in range(50)]
        warner.warn("bad_utf8", "other reason")
    assert logged == [True] + [False] * 49
    assert caplog.text.count("corrupt_image") == 1 and "bad_utf8" in caplog.text
    warner.interval_s = 0
    with caplog.at_level(logging.WARNING):
        warner.warn("corrupt_image", "again")
    assert "[49 more like it not logged]" in caplog.text


def test_counter_ignores_unreadable_shards_and_waits_for_enough_samples():
    c = samples.BadSampleCounter(max_bad_fraction=0.1, min_samples=100)
    skipped = np.zeros(len(samples.BAD_REASONS), np.int64)
    skipped[samples.REASON_INDEX["unreadable_shard"]] = 5
    skipped[samples.REASON_INDEX["corrupt_image"]] = 5
    c.add(40, skipped)
    assert c.bad_samples == 5 and c.bad_fraction == pytest.approx(5 / 45)
    c.check()  # 45 < 100 samples: too early to judge
    c.add(60, np.zeros_like(skipped))
    c.check()  # 5 / 105 is under 10 %
    state = c.get_state()
    c2 = samples.BadSampleCounter()
    c2.set_state(state)
    assert c2.good == 100 and c2.bad_samples == 5


def test_bad_records_at_the_very_end_are_still_counted(tmp_path):
    _write(tmp_path / "00000.tar", [("a", {"jpg": _jpeg(1), "txt": "one"}), ("b", {"jpg": _jpeg(2), "txt": "two"}),
                                    ("c", {"jpg": b"", "txt": "empty"}), ("d", {"txt": "no image"})])
    config = make_config(shards=str(tmp_path), num_epochs=1, shuffle=False, batch_size=4, drop_remainder=False)
    with iterator.make_iterator(config) as it:
        batches = list(it)
        m = it.metrics()
    assert [len(b["text"]) for b in batches] == [2]  # the blank row that carried the counts is dropped
    assert m["data/bad/empty_image"] == 1 and m["data/bad/missing_image"] == 1 and m["data/samples_good"] == 2
