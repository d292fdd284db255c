"""The fast tar reader agrees with python's tarfile on the formats img2dataset and GNU tar write."""

import io
import json
import tarfile

import numpy as np
import pytest

from vlscale.data import webdataset


def _tar_bytes(fmt, members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        d = tarfile.TarInfo("somedir")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


LONG = "x" * 120 + "/deep/" + "y" * 80  # over ustar's 100-char name field
MEMBERS = [("a/000.jpg", b"\xff\xd8jpeg"), ("a/000.txt", b"cap 0"), (f"{LONG}/001.txt", b"cap 1"),
           ("caf\u00e9/002.txt", "café".encode()), ("big/003.bin", bytes(range(256)) * 9)]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_match_tarfile(tmp_path, fmt):
    members = MEMBERS if fmt != tarfile.USTAR_FORMAT else [m for m in MEMBERS if LONG not in m[0] and "é" not in m[0]]
    path = tmp_path / "s.tar"
    path.write_bytes(_tar_bytes(fmt, members))
    with open(path, "rb") as f:
        got = list(webdataset.iter_tar_members(f, lambda name: True))
    assert got == members
    with open(path, "rb") as f:
        skipped = list(webdataset.iter_tar_members(f, lambda name: name.endswith(".txt")))
    assert [(n, d) for n, d in skipped] == [(n, d if n.endswith(".txt") else None) for n, d in members]


def test_samples_group_by_key_and_skip_exactly(tmp_path):
    path = tmp_path / "s.tar"
    members = [(f"{i:03d}.{ext}", f"{i}{ext}".encode()) for i in range(5) for ext in ("jpg", "txt")]
    path.write_bytes(_tar_bytes(tarfile.PAX_FORMAT, members))
    samples = list(webdataset.iter_tar_samples(str(path)))
    assert [s["__key__"] for s in samples] == ["000", "001", "002", "003", "004"]
    assert samples[2]["jpg"] == b"2jpg" and samples[2]["txt"] == b"2txt"
    assert list(webdataset.iter_tar_samples(str(path), skip=3)) == samples[3:]


def test_corrupt_header_mid_shard_loses_only_the_rest(tmp_path):
    raw = bytearray(_tar_bytes(tarfile.USTAR_FORMAT, [(f"{i:03d}.txt", b"x" * 10) for i in range(4)]))
    raw[512 + 2 * 1024 + 10] ^= 0xFF  # the name field of the 3rd file header (after a directory entry)
    path = tmp_path / "s.tar"
    path.write_bytes(bytes(raw))
    recs = list(webdataset.iter_tar_samples(str(path)))
    assert [r["__key__"] for r in recs if "__bad__" not in r] == ["000", "001"]
    assert recs[-1]["__bad__"] == "truncated_tar"


# -- which shards each reader reads (hosts x workers), and resuming on another topology -------------------------

from collections import Counter  # noqa: E402

import grain  # noqa: E402

from vlscale.data import records  # noqa: E402

from .conftest import NUM_SHARDS, PER_SHARD, make_config  # noqa: E402


def test_endless_epochs_give_every_reader_the_same_shard_count_and_every_shard_the_same_reads():
    # The pod case of issue 16: 1000 shards over 256 hosts. A fixed split gives 4 shards to 232 hosts and 3 to 24.
    shards, readers = 1000, 256
    assert Counter(len(range(i, shards, readers)) for i in range(readers)) == {4: 232, 3: 24}
    assert webdataset.balanced_epoch_length(shards, readers) == 768  # 3 shards per reader per epoch
    reads = np.zeros(shards, int)
    for epoch in range(125):  # 125 epochs x 768 visits = 96 passes over the 1000 shards
        window = webdataset.balanced_epoch_window(shards, readers, seed=5, epoch=epoch, shuffle=True)
        assert len(set(window.tolist())) == 768  # no shard twice in an epoch
        assert {len(window[r::readers]) for r in range(readers)} == {3}
        reads += np.bincount(window, minlength=shards)
    assert reads.min() == reads.max() == 96
    # Unshuffled with one reader, an epoch is the shard list in order.
    np.testing.assert_array_equal(webdataset.balanced_epoch_window(5, 1, 0, 3, False), np.arange(5))


def _keys(it, n):
    return [next(it)["__key__"] for _ in range(n)]


def test_hosts_with_unequal_shard_counts_read_their_shards_equally_often(tiny_shards):
    _, paths = tiny_shards  # 4 real shards of 12 samples over 3 hosts: a fixed split would give 2, 1, 1
    per_host = []
    for host in range(3):
        ds = webdataset.ShardInterleaveIterDataset(paths, seed=1, cycle_length=2, process_index=host, process_count=3)
        assert ds.shards_per_epoch == 1
        per_host.append(_keys(iter(ds), 4 * PER_SHARD))  # 4 epochs of 1 shard each
    reads = Counter(k for keys in per_host for k in keys)
    # 3 hosts x 4 epochs = 12 shard reads over 4 shards: each of the 48 samples exactly 3 times.
    assert len(reads) == NUM_SHARDS * PER_SHARD and set(reads.values()) == {3}
    # The fixed split would have host 1 read its single shard 4 times in the same 48 records.
    fixed = webdataset.ShardInterleaveIterDataset(paths[1::3], seed=1, cycle_length=2)
    assert set(Counter(_keys(iter(fixed), 4 * PER_SHARD)).values()) == {4}


def test_finite_pass_still_reads_every_shard_once_with_fixed_host_shares(tiny_shards):
    _, paths = tiny_shards
    got = []
    for host in range(3):
        ds = webdataset.ShardInterleaveIterDataset(paths, seed=1, num_epochs=1, process_index=host, process_count=3)
        got.append([r["__key__"] for r in ds])
    assert [len(k) for k in got] == [24, 12, 12]  # shards 0+3, 1, 2
    assert sorted(sum(got, [])) == [f"{i:09d}" for i in range(NUM_SHARDS * PER_SHARD)]


def _shard_of(key):
    return int(key) // PER_SHARD  # synth_shards: sample k of shard s is stream index s * PER_SHARD + k


def test_elastic_resume_from_two_hosts_onto_three_workers_starts_the_next_epoch(tiny_shards):
    _, paths = tiny_shards
    saved = []
    for host, n in ((0, 30), (1, 18)):  # hosts a little apart, as after a preemption
        it = iter(webdataset.ShardInterleaveIterDataset(paths, seed=2, cycle_length=2, process_index=host,
                                                        process_count=2))
        _keys(it, n)
        saved.append({"grain": it.get_state()})
    # k = 2 shards per host per epoch. Host 0 read epoch 0 (24 records) and opened epoch 1's two shards
    # (next_pos 4): epochs 0 and 1 are started. Host 1 is still in epoch 0. The new stream starts at epoch 2.
    assert [s["grain"]["next_pos"] for s in saved] == [4, 2]
    assert webdataset.resume_epoch(saved) == 2
    new = []
    for worker in range(3):  # one host with three grain workers, each a reader of its own
        ds = webdataset.ShardInterleaveIterDataset(paths, seed=2, cycle_length=1)  # one shard open: easy to check
        ds.set_slice(slice(worker, None, 3))
        it = iter(ds)
        state = webdataset.elastic_state(saved, it.get_state())
        assert state == {"start_epoch": 2}
        it.set_state(state)
        keys = _keys(it, PER_SHARD)  # one shard per reader per epoch (4 // 3)
        assert {_shard_of(k) for k in keys} == {int(ds.epoch_shards(2)[0])}
        assert it.get_state()["next_pos"] == 3  # epoch 2's one shard opened, epoch 3's next
        new.append(keys)
    # Epoch 2 of three readers: three distinct shards (the ring window starting at shard 2*3 mod 4 = 2).
    assert sorted(_shard_of(k[0]) for k in new) == [0, 2, 3]
    assert len(set(sum(new, []))) == 3 * PER_SHARD


def test_elastic_state_through_window_shuffle_and_worker_processes(tiny_shards):
    out, _ = tiny_shards
    config = make_config(shards=str(out), shuffle=True, cycle_length=1, shuffle_window=4)
    saved = []
    for host in range(2):
        it = iter(records.source_records(config, host, 2))
        _keys(it, 10)  # inside each host's first shard: window starts at records 8, slot (0, 8), next_pos 1
        saved.append({"grain": it.get_state()})
    # Behind a window shuffle the reader may have opened position 1 (its second shard of epoch 0): start at epoch 1.
    assert webdataset.resume_epoch(saved) == 1
    # Resume on one host with two worker processes (each reads 2 shards per epoch).
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside an absl app: defaults
        flags.FLAGS.mark_as_parsed()
    ds = records.source_records(config, 0, 1).mp_prefetch(grain.MultiprocessingOptions(num_workers=2))
    it = iter(ds)
    try:
        state = webdataset.elastic_state(saved, it.get_state())
        assert json.loads(json.dumps(state)) == state  # plain JSON, like the saved one
        it.set_state(state)
        epoch1 = _keys(it, NUM_SHARDS * PER_SHARD)
    finally:
        it.close()
    # Epoch 1 on two readers covers every sample exactly once (and shuffled).
    assert sorted(epoch1) == [f"{i:09d}" for i in range(NUM_SHARDS * PER_SHARD)] and epoch1 != sorted(epoch1)


def test_elastic_state_is_none_for_random_access_sources_and_refuses_a_mix(tiny_shards):
    out, _ = tiny_shards
    synth = make_config("synth")
    a = iter(records.source_records(synth, 0, 2))
    next(a)
    fresh = iter(records.source_records(synth, 0, 1)).get_state()
    assert webdataset.elastic_state([{"grain": a.get_state()}], fresh) is None
    wds = iter(records.source_records(make_config(shards=str(out)), 0, 1))
    with pytest.raises(ValueError, match="disagree"):
        webdataset.elastic_state([{"grain": a.get_state()}], wds.get_state())
    with pytest.raises(ValueError, match="shards_per_epoch"):  # a state from before this change
        webdataset.elastic_state([{"grain": {"next_pos": 3, "slots": [], "rr": 0}}], wds.get_state())


def test_elastic_resume_from_one_reader_onto_two_hosts_with_two_workers(tiny_shards):
    _, paths = tiny_shards
    old = iter(webdataset.ShardInterleaveIterDataset(paths, seed=4, cycle_length=2))  # 1 host, no workers: k = 4
    _keys(old, 30)  # shards at positions 0 and 1 read (24), 2 and 3 open: all of epoch 0 opened, next_pos 4
    saved = [{"grain": old.get_state()}]
    assert webdataset.resume_epoch(saved) == 1
    first_shards = []
    for host in range(2):
        for worker in range(2):  # 4 readers over 4 shards: one each per epoch
            ds = webdataset.ShardInterleaveIterDataset(paths, seed=4, cycle_length=1, process_index=host,
                                                       process_count=2)
            ds.set_slice(slice(worker, None, 2))
            it = iter(ds)
            it.set_state(webdataset.elastic_state(saved, it.get_state()))
            keys = _keys(it, PER_SHARD)
            assert len({_shard_of(k) for k in keys}) == 1 and len(set(keys)) == PER_SHARD
            first_shards.append(_shard_of(keys[0]))
    assert sorted(first_shards) == [0, 1, 2, 3]  # epoch 1 deals every shard to exactly one reader
