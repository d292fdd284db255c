"""Decisions all hosts take together, with hosts simulated by process_index/process_count and a summing reduce."""

import tarfile
import threading

import numpy as np
import pytest

from vlscale.data import hosts, iterator, samples, synth, synth_shards, webdataset

from .conftest import NUM_SHARDS, PER_SHARD, TINY, make_config


def _jpeg(i):
    return synth_shards.encode_image(synth.generate(TINY, 0, "train", i)["image"])


@pytest.fixture(scope="module")
def uneven_bad(tmp_path_factory):
    """Host 0's shard: 12 good + 2 corrupt (14 % bad); host 1's: 12 good. Together 2 / 26 = 7.7 %."""
    d = tmp_path_factory.mktemp("uneven_bad")
    for shard, bad in ((0, 2), (1, 0)):
        with tarfile.open(d / f"{shard:05d}.tar", "w") as tar:
            for i in range(12):
                webdataset.write_tar_sample(tar, f"s{shard}g{i:02d}", {"jpg": _jpeg(i), "txt": f"caption {i}"})
            for i in range(bad):
                webdataset.write_tar_sample(tar, f"s{shard}b{i}", {"jpg": b"not a jpeg", "txt": "broken"})
    return d


def _run_hosts(config, n_hosts=2):
    its = [iterator.make_iterator(config, process_index=h, process_count=n_hosts) for h in range(n_hosts)]
    for it in its:
        for _ in it:  # no host stops on its own counts: the guard waits for the all-host check
            pass
    return its


def test_bad_sample_guard_decides_on_the_counts_of_all_hosts(uneven_bad):
    finite = dict(num_epochs=1, batch_size=4, train=False, drop_remainder=False)  # a remainder keeps its counts
    config = make_config(shards=str(uneven_bad), max_bad_fraction=0.10, **finite)
    its = _run_hosts(config)
    local = [it.bad_counts() for it in its]
    assert local[0][0] == 12 and local[0][1 + samples.REASON_INDEX["corrupt_image"]] == 2
    total = local[0] + local[1]
    for it in its:  # 7.7 % over both hosts is under 10 %, although host 0 alone has 14 %: nobody stops
        it.check_bad_fraction(lambda counts: total)
    config = make_config(shards=str(uneven_bad), max_bad_fraction=0.05, **finite)
    its = _run_hosts(config)
    messages = []
    for it in its:  # 7.7 % is over 5 %: every host raises, with the same one-line message
        with pytest.raises(samples.BadDataError) as e:
            it.check_bad_fraction(lambda counts: total)
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    assert "7.69% of 26 samples over 2 hosts are bad (corrupt_image=2)" in messages[0] and "\n" not in messages[0]
    for it in its:
        it.close()


def test_one_process_still_stops_on_its_own_counts(uneven_bad):
    config = make_config(shards=str(uneven_bad / "00000.tar"), num_epochs=1, batch_size=4, train=False,
                         drop_remainder=False, max_bad_fraction=0.10)
    with iterator.make_iterator(config) as it, pytest.raises(samples.BadDataError, match="14.29% of 14 samples are"):
        list(it)
    with iterator.make_iterator(make_config(shards=str(uneven_bad), num_epochs=1, batch_size=4, train=False,
                                            drop_remainder=False, max_bad_fraction=0.10)) as it:
        list(it)
        it.check_bad_fraction()  # the default reduce with one process: its own counts (7.7 % < 10 %)


def test_counts_cross_hosts_exactly_beyond_int32():
    counts = np.asarray([0, 1, 2**31 - 1, 2**31, 5 * 2**40 + 7], np.int64)
    words = hosts.to_words(counts)
    assert words.dtype == np.int32
    np.testing.assert_array_equal(hosts.from_words(np.stack([words, words])).sum(0), 2 * counts)
    np.testing.assert_array_equal(hosts.allgather_sum(counts), counts)  # one process: unchanged


def _simulated_allreduce(n):
    """A collective for n threads: each passes its counts and gets the sum once all have arrived."""
    barrier = threading.Barrier(n, timeout=60)
    slots = [None] * n

    def for_host(h):
        def reduce(counts):
            slots[h] = np.asarray(counts, np.int64)
            barrier.wait()
            total = sum(slots)
            barrier.wait()  # nobody overwrites a slot before every host has read the sum
            return total
        return reduce

    return for_host


def _padded_pass(config, n_hosts=2):
    reduce_for = _simulated_allreduce(n_hosts)
    out = [None] * n_hosts
    errors = []

    def host(h):
        try:
            with iterator.make_iterator(config, process_index=h, process_count=n_hosts) as it:
                out[h] = list(it.padded_batches(reduce_for(h)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=host, args=(h,)) for h in range(n_hosts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return out


def test_finite_pass_gives_every_host_the_same_number_of_padded_batches(tiny_shards):
    out, _ = tiny_shards
    # Three shards over two hosts: host 0 reads shards 0 and 2 (24 samples), host 1 shard 1 (12).
    config = make_config(shards=str(out / "{00000..00002}.tar"), num_epochs=1, batch_size=10, train=False,
                         shuffle=False, drop_remainder=False, image_dtype="uint8")
    per_host = _padded_pass(config)
    assert [len(b) for b in per_host] == [5, 5]  # ceil(24 / 5) batches each, host 1 padded
    valid = [[int(b["valid"].sum()) for b in batches] for batches in per_host]
    assert valid == [[5, 5, 5, 5, 4], [5, 5, 2, 0, 0]]
    for batches in per_host:
        for b in batches:
            assert b["image"].shape == (5, 32, 32, 3) and b["image"].dtype == np.uint8
            assert b["text"].shape == (5, 16) and b["valid"].dtype == bool
            assert not b["image"][~b["valid"]].any() and not b["text"][~b["valid"]].any()
    # The valid rows are exactly the 36 samples of the three shards.
    rows = sorted(tuple(r) for batches in per_host for b in batches for r in b["text"][b["valid"]])
    with iterator.make_iterator(make_config(shards=str(out / "{00000..00002}.tar"), num_epochs=1, batch_size=36,
                                            train=False, shuffle=False)) as it:
        assert rows == sorted(tuple(r) for r in next(it)["text"])
    assert 3 * PER_SHARD == 36 < NUM_SHARDS * PER_SHARD


def test_padded_pass_with_one_process_and_the_endless_stream_refused(monkeypatch):
    with iterator.make_iterator(make_config("synth", batch_size=4)) as it, pytest.raises(Exception, match="num_epochs"):
        next(it.padded_batches())
    # A finite random-access source of 10 records, one host, batches of 4: 4, 4, then 2 valid + 2 padding.
    src = synth.SynthSource(TINY, seed=0, length=10)
    monkeypatch.setattr(synth, "SynthSource", lambda cfg, seed, split: src)
    with iterator.make_iterator(make_config("synth", num_epochs=1, batch_size=4, train=False)) as it, \
            pytest.raises(Exception, match="drop_remainder=False"):
        next(it.padded_batches())
    with iterator.make_iterator(make_config("synth", num_epochs=1, batch_size=4, train=False,
                                            drop_remainder=False)) as it:
        batches = list(it.padded_batches())
    assert [int(b["valid"].sum()) for b in batches] == [4, 4, 2]
    assert all(len(b["valid"]) == 4 for b in batches)
