import json
import tarfile

import jax
import numpy as np
import orbax.checkpoint as ocp
import grain
from jax.sharding import NamedSharding, PartitionSpec as P

from vlscale.data import iterator, normalize, records, synth, synth_shards, webdataset
from vlscale.models import tokenizer as tokenizer_lib

from .conftest import NUM_SHARDS, PER_SHARD, TINY, make_config


def _keys_in_order(config, n_batches, **kw):
    """Runs the pipeline and returns the token rows as tuples (a fingerprint of each sample)."""
    with iterator.make_iterator(config, **kw) as it:
        return [[tuple(row) for row in next(it)["text"]] for _ in range(n_batches)]


def test_webdataset_batches_have_right_shapes_and_real_captions(tiny_shards):
    out, paths = tiny_shards
    config = make_config(shards=str(out / "{00000..00003}.tar"), shuffle=False, num_epochs=1, train=False)
    tok = tokenizer_lib.get_tokenizer(16)
    expected = {tuple(tok(synth.generate(TINY, 7, "train", i)["caption"])[0]) for i in range(NUM_SHARDS * PER_SHARD)}
    with iterator.make_iterator(config) as it:
        batches = list(it)
        assert it.samples_seen == len(batches) * 4 == NUM_SHARDS * PER_SHARD
        assert it.metrics()["data/samples_good"] == NUM_SHARDS * PER_SHARD
    b = batches[0]
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["text"].shape == (4, 16) and b["text"].dtype == np.int32
    assert set(b) == {"image", "text"}
    # Normalised with the OpenAI mean/std: roughly centred, not in [0, 255].
    assert -2.5 < b["image"].min() < 0 < b["image"].max() < 2.5
    seen = [tuple(r) for batch in batches for r in batch["text"]]
    assert set(seen) == expected and len(seen) == len(expected)


def test_two_hosts_see_disjoint_complete_shares(tiny_shards):
    out, _ = tiny_shards
    shares = []
    for host in range(2):
        config = make_config(shards=str(out), num_epochs=1, batch_size=4, train=False)
        with iterator.make_iterator(config, process_index=host, process_count=2) as it:
            rows = [tuple(r) for b in it for r in b["text"]]
            assert it.samples_seen == len(rows) * 2  # global samples: both hosts' batches
        shares.append(rows)
    assert len(shares[0]) == len(shares[1]) == NUM_SHARDS * PER_SHARD // 2
    # Captions can repeat across samples; compare multisets of (shard-assigned) samples via keys instead.
    config = make_config(shards=str(out), num_epochs=1, shuffle=False, train=False, batch_size=2)
    keys = []
    for host in range(2):
        ds = records.source_records(config, host, 2)
        keys.append([r["__key__"] for r in ds])
    assert not set(keys[0]) & set(keys[1])
    assert sorted(keys[0] + keys[1]) == [f"{i:09d}" for i in range(NUM_SHARDS * PER_SHARD)]


def test_shard_order_and_window_shuffle_change_per_epoch(tiny_shards):
    out, _ = tiny_shards
    config = make_config(shards=str(out), num_epochs=2, shuffle=True, batch_size=2)
    keys = [r["__key__"] for r in records.source_records(config, 0, 1)]
    n = NUM_SHARDS * PER_SHARD
    assert len(keys) == 2 * n
    epoch0, epoch1 = keys[:n], keys[n:]
    assert epoch0 != sorted(epoch0) and epoch0 != epoch1
    # Each epoch covers every sample once (shuffling only reorders; the window spans epoch ends a little).
    assert sorted(keys) == sorted([f"{i:09d}" for i in range(n)] * 2)


def test_resume_gives_exactly_the_uninterrupted_batches(tiny_shards):
    out, _ = tiny_shards
    # Endless, augmented, shuffled, with the main-process prefetch thread running ahead.
    config = make_config(shards=str(out), shuffle=True, train=True, prefetch=2)
    with iterator.make_iterator(config) as it:
        full = [next(it) for _ in range(30)]  # > 2 epochs of 48 samples
    with iterator.make_iterator(config) as it:
        for _ in range(11):
            next(it)
        state = it.get_state()
    json.loads(state)  # the state is plain JSON
    with iterator.make_iterator(config) as it:
        it.set_state(state)
        assert it.samples_seen == 11 * 4
        resumed = [next(it) for _ in range(19)]
    for a, b in zip(full[11:], resumed):
        np.testing.assert_array_equal(a["text"], b["text"])
        np.testing.assert_array_equal(a["image"], b["image"])


def test_resume_with_a_worker_process_and_orbax_checkpoint(tiny_shards, tmp_path):
    out, _ = tiny_shards
    config = make_config(shards=str(out), worker_count=1, shuffle=True)
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    with iterator.make_iterator(config) as it:
        for _ in range(5):
            next(it)
        with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
            mngr.save(5, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                 data=grain.checkpoint.CheckpointSave(it)))
            mngr.wait_until_finished()
        expected = [next(it) for _ in range(6)]
    with iterator.make_iterator(config) as it2:
        with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
            restored = mngr.restore(5, args=ocp.args.Composite(params=ocp.args.StandardRestore(params),
                                                               data=grain.checkpoint.CheckpointRestore(it2)))
        np.testing.assert_array_equal(restored["params"]["w"], params["w"])
        assert it2.samples_seen == 20
        for a in expected:
            b = next(it2)
            np.testing.assert_array_equal(a["text"], b["text"])
            np.testing.assert_array_equal(a["image"], b["image"])
    assert (tmp_path / "ckpt" / "5" / "data" / "process_0-of-1.json").is_file()


def test_synth_stream_resumes_and_splits_across_hosts():
    config = make_config("synth", train=True)
    with iterator.make_iterator(config) as it:
        full = [next(it) for _ in range(6)]
    with iterator.make_iterator(config) as it:
        next(it), next(it)
        state = it.get_state()
    with iterator.make_iterator(config) as it:
        it.set_state(state)
        for a in full[2:]:
            np.testing.assert_array_equal(a["image"], next(it)["image"])
    rows = [set(tuple(r) for b in _keys_in_order(make_config("synth", train=False), 3,
                                                   process_index=h, process_count=2) for r in b) for h in range(2)]
    # Host h reads stream indices h, h+2, ...: different captions, same count.
    assert len(rows[0] & rows[1]) < 3


def test_global_batch_on_eight_devices(tiny_shards):
    out, _ = tiny_shards
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    config = make_config(shards=str(out), batch_size=8, train=False, shuffle=False)
    with iterator.make_iterator(config) as it:
        host = next(iterator.make_iterator(config))
        batch = it.global_batch(sharding)
    assert batch["image"].shape == (8, 32, 32, 3) and batch["text"].shape == (8, 16)
    assert batch["image"].sharding == sharding
    assert len(batch["image"].addressable_shards) == 8
    assert batch["image"].addressable_shards[0].data.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(np.asarray(batch["text"]), host["text"])


def test_state_from_another_host_count_is_refused(tiny_shards):
    out, _ = tiny_shards
    config = make_config(shards=str(out))
    with iterator.make_iterator(config, process_index=0, process_count=2) as it:
        next(it)
        state = it.get_state()
    with iterator.make_iterator(config) as it:
        try:
            it.set_state(state)
        except Exception as e:  # noqa: BLE001
            assert "2 hosts" in str(e)
        else:
            raise AssertionError("restoring a 2-host state on 1 host must fail")


def test_interleave_state_is_small_and_exact(tiny_shards):
    _, paths = tiny_shards
    ds = webdataset.ShardInterleaveIterDataset(paths, seed=3, cycle_length=3, num_epochs=2)
    it = iter(ds)
    head = [next(it)["__key__"] for _ in range(37)]
    state = it.get_state()
    tail = [r["__key__"] for r in it]
    assert len(head) + len(tail) == 2 * NUM_SHARDS * PER_SHARD
    assert len(state["slots"]) == 3
    it2 = iter(ds)
    it2.set_state(state)
    assert [r["__key__"] for r in it2] == tail


def test_uint8_images_normalised_on_device_match_the_host_path(tiny_shards):
    out, _ = tiny_shards
    for train in (True, False):
        host = make_config(shards=str(out), train=train)
        raw = make_config(shards=str(out), train=train, image_dtype="uint8")
        with iterator.make_iterator(host) as a, iterator.make_iterator(raw) as b:
            for _ in range(3):
                x, y = next(a), next(b)
                assert y["image"].dtype == np.uint8
                np.testing.assert_array_equal(x["text"], y["text"])
                np.testing.assert_allclose(np.asarray(normalize.normalize_images(y["image"])), x["image"], atol=1e-6)


def test_in_memory_batches_resume_and_split_hosts(tiny_shards):
    out, _ = tiny_shards
    config = make_config(shards=str(out), in_memory=True, batch_size=8, prefetch=2)
    with iterator.make_iterator(config) as it:
        full = [next(it) for _ in range(14)]  # 48 samples -> 6 batches per epoch: > 2 epochs
        assert it.samples_seen == 14 * 8
    epoch0 = {tuple(r) for b in full[:6] for r in b["text"]}
    with iterator.make_iterator(make_config(shards=str(out), batch_size=48, train=False)) as it:
        assert epoch0 == {tuple(r) for r in next(it)["text"]}  # one epoch = every sample once
    assert not np.array_equal(full[0]["text"], full[6]["text"])  # a fresh permutation each epoch
    with iterator.make_iterator(config) as it:
        for _ in range(5):
            next(it)
        state = it.get_state()
    with iterator.make_iterator(config) as it:
        it.set_state(state)
        for a in full[5:]:
            b = next(it)
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["text"], b["text"])
    shares = []
    for host in range(2):
        with iterator.make_iterator(config, process_index=host, process_count=2) as it:
            shares.append({tuple(r) for _ in range(6) for r in next(it)["text"]})
    assert not shares[0] & shares[1] and shares[0] | shares[1] == epoch0


def test_in_memory_synth_and_load_time_bad_counts(tmp_path):
    config = make_config("synth", in_memory=True, in_memory_samples=20, batch_size=5, image_dtype="uint8")
    with iterator.make_iterator(config) as it:
        b = next(it)
    assert b["image"].dtype == np.uint8 and b["image"].shape == (5, 32, 32, 3)
    tok = tokenizer_lib.get_tokenizer(16)
    drawn = {tuple(tok(synth.generate(TINY, 0, "train", i)["caption"])[0]) for i in range(20)}
    assert {tuple(r) for r in b["text"]} <= drawn
    # A bad sample after the last good one is still counted (reported on a blank row that is dropped).
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        good = synth_shards.encode_image(synth.generate(TINY, 0, "train", 0)["image"])
        webdataset.write_tar_sample(tar, "good", {"jpg": good, "txt": "fine"})
        webdataset.write_tar_sample(tar, "bad", {"jpg": b"junk", "txt": "broken"})
    with iterator.make_iterator(make_config(shards=str(tmp_path), in_memory=True, batch_size=1)) as it:
        next(it)
        assert it.metrics()["data/bad/corrupt_image"] == 1


def test_random_access_sources_split_disjoint_complete_and_reshuffle_per_epoch():
    src = synth.SynthSource(TINY, seed=0, length=30)
    keys = []
    for host in range(2):
        ds = records.random_access_records(src, process_index=host, process_count=2, seed=3, shuffle=True,
                                           num_epochs=2)
        keys.append([r["__key__"] for r in ds])
    first = [k[:15] for k in keys]
    assert not set(first[0]) & set(first[1])
    assert sorted(first[0] + first[1]) == [f"{i:09d}" for i in range(30)]
    assert keys[0][:15] != keys[0][15:] and sorted(keys[0][:15]) == sorted(keys[0][15:])


def test_config_mistakes_are_one_line_user_errors(tiny_shards):
    from vlscale.errors import UserError

    out, _ = tiny_shards
    cases = [
        (make_config("nope"), "unknown data.source 'nope'"),
        (make_config(shards=""), "data.shards is empty"),
        (make_config(shards=str(out), batch_size=5, process_index=0, process_count=2), "does not split over 2 hosts"),
        (make_config(shards=str(out / "missing-*.tar")), "matches no files"),
        (make_config(shards=str(out), image_dtype="float16"), "is not one of"),
    ]
    for config, message in cases:
        try:
            iterator.make_iterator(config)
        except UserError as e:
            assert message in str(e) and "\n" not in str(e)
        else:
            raise AssertionError(f"expected a UserError mentioning {message!r}")


def test_host_normalisation_is_bit_identical_to_the_per_sample_transform():
    from PIL import Image

    from vlscale.models.transforms import to_normalized_array

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    images[0, 0, :, 0] = images[0, 1, :, 1] = images[0, 2, :, 2] = np.arange(256)[:16]
    images[1].reshape(-1, 3)[:256] = np.arange(256, dtype=np.uint8)[:, None]  # every value in every channel
    got = normalize.normalize_host(images)
    want = np.stack([to_normalized_array(Image.fromarray(x)) for x in images])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(np.asarray(normalize.normalize_images(images)), want, atol=1e-6)
