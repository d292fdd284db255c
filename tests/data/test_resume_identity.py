"""A restored iterator keeps counting samples from the saved value and refuses to resume on other data."""

import numpy as np
import pytest

from vlscale.data import identity, iterator
from vlscale.errors import UserError
from vlscale.runtime.checkpoint import NeedsAllHosts

from .conftest import make_config


def _rows(batches):
    return [tuple(r) for b in batches for r in b["text"]]


def test_samples_seen_is_restored_not_recomputed_when_the_batch_size_changes():
    small = make_config("synth", train=False, batch_size=4)
    with iterator.make_iterator(small) as it:
        uninterrupted = _rows([next(it) for _ in range(5)])  # stream rows 0..19
    with iterator.make_iterator(small) as it:
        for _ in range(3):
            next(it)
        state = it.get_state()
        assert it.samples_seen == 12
    with iterator.make_iterator(make_config("synth", train=False, batch_size=8)) as it:
        it.set_state(state)
        assert it.samples_seen == 12 and it.batches == 3  # not 3 batches x 8
        b = next(it)
        assert it.samples_seen == 20 and it.metrics()["data/samples_seen"] == 20.0
        # The stream continues at the record after the last one read: rows 12..19.
        assert _rows([b]) == uninterrupted[12:20]


def test_in_memory_resume_with_another_batch_size_repeats_no_sample_of_the_epoch():
    config = make_config("synth", in_memory=True, in_memory_samples=24, batch_size=4, image_dtype="uint8")
    with iterator.make_iterator(config) as it:
        seen = [next(it)["image"] for _ in range(3)]  # half of epoch 0 (6 batches of 4)
        state = it.get_state()
    with iterator.make_iterator(make_config("synth", in_memory=True, in_memory_samples=24, batch_size=8,
                                            image_dtype="uint8")) as it:
        it.set_state(state)
        assert it.samples_seen == 12
        rest = next(it)["image"]  # epoch 0, samples 16..23 of its permutation (batch boundary of 8)
        assert it.samples_seen == 20
    before = {x.tobytes() for b in seen for x in b}
    after = {x.tobytes() for x in rest}
    assert len(before) == 12 and len(after) == 8 and not before & after


def test_fingerprint_ignores_throughput_settings_and_follows_the_data(tiny_shards):
    out, _ = tiny_shards
    base = identity.fingerprint(identity.data_identity(make_config("synth")))
    assert len(base) == 16 and int(base, 16) >= 0
    same = make_config("synth", worker_count=3, prefetch=0, batch_size=64, read_threads=4, max_bad_fraction=0.5,
                       image_dtype="uint8", **{"tfds.split": "test"})
    same.synth.knobs.max_count = 4  # the default, written out
    assert identity.fingerprint(identity.data_identity(same)) == base
    for changed in ({"synth.seed": 1}, {"seed": 5}, {"image_size": 64}, {"context_length": 77},
                    {"synth.knobs.max_count": 3}, {"in_memory": True}, {"train": False}):
        assert identity.fingerprint(identity.data_identity(make_config("synth", **changed))) != base, changed
    # Webdataset: the resolved shard list counts, however it is written.
    spelled = [str(out), str(out / "*.tar"), str(out / "{00000..00003}.tar")]
    prints = {identity.fingerprint(identity.data_identity(make_config(shards=s))) for s in spelled}
    assert len(prints) == 1
    fewer = identity.fingerprint(identity.data_identity(make_config(shards=str(out / "{00000..00002}.tar"))))
    assert fewer not in prints
    with iterator.make_iterator(make_config("synth")) as it:
        assert it.fingerprint() == base and it.identity()["synth"]["seed"] == 0


def _refusal(saved_config, resumed_config):
    with iterator.make_iterator(saved_config) as it:
        next(it)
        state = it.get_state()
    with iterator.make_iterator(resumed_config) as it, pytest.raises(UserError) as e:
        it.set_state(state)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_resume_on_other_data_is_refused_naming_what_differs(tiny_shards):
    out, _ = tiny_shards
    msg = _refusal(make_config("synth"), make_config("synth", **{"synth.seed": 3}))
    assert "saved for other data" in msg and "synth.seed 0 -> 3" in msg
    msg = _refusal(make_config(shards=str(out)), make_config(shards=str(out / "{00000..00002}.tar")))
    assert "shards.count 4 -> 3" in msg
    # A shard stream's position is saved per worker: another worker count needs every host's state (the
    # checkpoint layer then passes them all, and the stream continues at the next epoch: test_webdataset.py).
    with iterator.make_iterator(make_config(shards=str(out))) as it:
        next(it)
        state = it.get_state()
    with iterator.make_iterator(make_config(shards=str(out), worker_count=1)) as it, pytest.raises(NeedsAllHosts):
        it.set_state(state)
    # What is not the data resumes: another prefetch depth, batch size or worker count (global order).
    with iterator.make_iterator(make_config("synth")) as it:
        next(it)
        state = it.get_state()
    with iterator.make_iterator(make_config("synth", prefetch=2, batch_size=8, worker_count=1)) as it:
        it.set_state(state)
        assert it.samples_seen == 4


def test_states_of_the_host_dependent_order_are_refused_for_random_access_sources():
    config = make_config("synth", train=False)
    with iterator.make_iterator(config) as it:
        next(it)
        old = {k: v for k, v in it.state_dict().items() if k != "order"}
    old["version"] = 2
    with iterator.make_iterator(config) as it, pytest.raises(UserError, match="older vlscale"):
        it.set_state(old)


def test_version_1_states_of_a_shard_stream_still_restore(tiny_shards):
    out, _ = tiny_shards
    config = make_config(shards=str(out), train=False)
    with iterator.make_iterator(config) as it:
        next(it), next(it)
        state = it.state_dict()
        expected = next(it)
    old = {k: state[k] for k in ("process_index", "process_count", "batches", "samples_seen", "counter", "grain")}
    old["version"] = 1
    with iterator.make_iterator(config) as it:
        it.set_state(old)
        assert it.samples_seen == 8
        np.testing.assert_array_equal(next(it)["text"], expected["text"])


def test_difference_text_lists_fields_saved_value_first():
    a = {"source": "synth", "synth": {"seed": 0, "knobs": {"max_count": 4}}, "image_size": 32}
    b = {"source": "synth", "synth": {"seed": 1, "knobs": {"max_count": 4}}, "image_size": 64}
    assert identity.describe_difference(a, b) == "image_size 32 -> 64, synth.seed 0 -> 1"
