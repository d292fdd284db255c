"""The global sample order: batches of random-access sources are a function of the seed and the global sample
index only, whatever the host count, worker count or global batch a run was resumed with."""

import grain
import numpy as np
import pytest

from tests.data.conftest import NUM_SHARDS, PER_SHARD, make_config
from vlscale.data import global_order, iterator


def _global_batches(config, hosts, batches, **kw):
    """The first ``batches`` global batches assembled from ``hosts`` simulated hosts (rows in host order)."""
    its = [iterator.make_iterator(config, process_index=h, process_count=hosts) for h in range(hosts)]
    try:
        out = []
        for _ in range(batches):
            parts = [next(it) for it in its]
            out.append({k: np.concatenate([p[k] for p in parts]) for k in ("image", "text")})
        return out, its
    finally:
        for it in its:
            it.close()


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["text"], y["text"])


@pytest.mark.parametrize("source", ["synth", "folder"])
def test_one_host_and_two_hosts_see_the_same_augmented_shuffled_batches(source, tmp_path):
    config = _config(source, tmp_path, batch_size=8)
    assert config.train and config.shuffle  # the default path: shuffled, augmented
    one, _ = _global_batches(config, 1, 3)
    two, _ = _global_batches(config, 2, 3)
    four, _ = _global_batches(config, 4, 3)
    _assert_same(one, two)
    _assert_same(one, four)
    # Not a degenerate stream: the batches differ from each other.
    assert not np.array_equal(one[0]["text"], one[1]["text"])


def test_workers_do_not_change_the_batches():
    config = make_config("synth", batch_size=8)
    plain, _ = _global_batches(config, 1, 3)
    with_workers, _ = _global_batches(make_config("synth", batch_size=8, worker_count=2), 1, 3)
    _assert_same(plain, with_workers)


def _state_after(config, hosts, batches):
    its = [iterator.make_iterator(config, process_index=h, process_count=hosts) for h in range(hosts)]
    for _ in range(batches):
        for it in its:
            next(it)
    states = [it.state_dict() for it in its]
    for it in its:
        it.close()
    return states


@pytest.mark.parametrize("saved_hosts,resumed_hosts", [(2, 1), (1, 2), (2, 4)])
def test_a_state_saved_on_p_hosts_continues_on_other_hosts_at_the_same_sample(saved_hosts, resumed_hosts):
    config = make_config("synth", batch_size=8)
    expected, _ = _global_batches(config, 1, 5)
    states = _state_after(config, saved_hosts, 2)
    its = [iterator.make_iterator(config, process_index=h, process_count=resumed_hosts) for h in range(resumed_hosts)]
    for h, it in enumerate(its):
        own = states[h] if resumed_hosts == saved_hosts else None
        it.set_state(own if own is not None else {"elastic": states})
        assert it.samples_seen == 16
    got = []
    for _ in range(3):
        parts = [next(it) for it in its]
        got.append({k: np.concatenate([p[k] for p in parts]) for k in ("image", "text")})
    for it in its:
        it.close()
    _assert_same(expected[2:], got)


def test_elastic_resume_keeps_the_bad_sample_totals_on_host_zero():
    config = make_config("synth", batch_size=8)
    states = _state_after(config, 2, 2)
    for i, st in enumerate(states):
        st["counter"] = {"good": 10 + i, "bad": {**st["counter"]["bad"], "corrupt_image": 1 + i}}
    zero = iterator.make_iterator(config, process_index=0, process_count=1)
    zero.set_state({"elastic": states})
    assert zero.counter.good == 21 and zero.counter.get_state()["bad"]["corrupt_image"] == 3
    zero.close()


def test_a_resume_with_another_global_batch_continues_at_the_next_sample():
    """Samples 0..15 at batch 8, then batch 4 from sample 16: the same samples, no gap, no repeat."""
    config = make_config("synth", batch_size=8, train=False)
    full, _ = _global_batches(make_config("synth", batch_size=4, train=False), 1, 8)
    state = _state_after(config, 1, 2)[0]
    with iterator.make_iterator(make_config("synth", batch_size=4, train=False)) as it:
        it.set_state(state)
        rest = [next(it) for _ in range(4)]
    _assert_same(full[4:], rest)


def test_host_share_maps_rows_to_global_indices():
    records = grain.MapDataset.range(1000)
    shares = [global_order.HostShare(records, global_batch_size=6, process_index=h, process_count=3, start=5)
              for h in range(3)]
    rows = [[shares[h][j][0] for j in range(4)] for h in range(3)]  # two batches of 2 rows per host
    assert rows == [[5, 6, 11, 12], [7, 8, 13, 14], [9, 10, 15, 16]]
    assert len(shares[0]) == (1000 - 5) // 6 * 2


def test_a_finite_stream_ends_after_its_last_full_global_batch():
    records = grain.MapDataset.range(10)
    share = global_order.HostShare(records, global_batch_size=4, process_index=1, process_count=2)
    assert len(share) == 4 and [share[j][0] for j in range(4)] == [2, 3, 6, 7]


def test_bad_records_get_the_same_deterministic_substitutes_on_every_layout(tmp_path):
    config = _config("folder", tmp_path, batch_size=8, corrupt=(3, 9))
    one, its = _global_batches(config, 1, 2)
    two, _ = _global_batches(config, 2, 2)
    _assert_same(one, two)
    assert sum(int(it.counter.bad.sum()) for it in its) >= 1  # the corrupt files were skipped and counted


def _config(source, tmp_path, corrupt=(), **kw):
    if source == "synth":
        return make_config("synth", **kw)
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    lines = ["image_path,caption"]
    for i in range(24):
        path = root / f"{i}.png"
        if i in corrupt:
            path.write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), np.uint8)).save(path)
        lines.append(f"{i}.png,a picture number {i}")
    (tmp_path / "captions.csv").write_text("\n".join(lines) + "\n")
    c = make_config("folder", **kw)
    c.folder.captions_file = str(tmp_path / "captions.csv")
    c.folder.root = str(root)
    return c


def test_a_shard_stream_saved_by_two_hosts_continues_on_one_at_the_next_epoch(tiny_shards):
    """Tar streams are per reader: on another host count they restart at the next whole epoch (the bound in
    docs/data.md), keeping samples_seen; the first epoch after the resume holds every sample exactly once."""
    out, _ = tiny_shards
    config = make_config(shards=str(out), batch_size=4, train=False, shuffle_window=1)
    states = _state_after(config, 2, 2)
    with iterator.make_iterator(config, process_index=0, process_count=1) as it:
        it.set_state({"elastic": states})
        assert it.samples_seen == 8
        per_epoch = 0
        keys = set()
        # One epoch of the stream: every sample of the shards, each once.
        while per_epoch < NUM_SHARDS * PER_SHARD:
            batch = next(it)
            keys.update(map(bytes, batch["text"]))
            per_epoch += len(batch["text"])
    assert per_epoch == NUM_SHARDS * PER_SHARD and len(keys) == NUM_SHARDS * PER_SHARD
