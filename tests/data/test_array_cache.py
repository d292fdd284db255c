"""In-memory synthetic sets are drawn once: later iterators (this process or another) take them from the cache."""

import numpy as np
import pytest

from vlscale.data import array_cache, in_memory, iterator

from .conftest import make_config


@pytest.fixture(autouse=True)
def _fresh_memo():
    array_cache.clear_memo()
    yield
    array_cache.clear_memo()


def _first_batches(config, n=3):
    with iterator.make_iterator(config) as it:
        return [next(it) for _ in range(n)]


def test_in_memory_synth_set_is_rendered_once_and_reused(tmp_path, monkeypatch):
    config = make_config("synth", in_memory=True, in_memory_samples=24, batch_size=8, image_dtype="uint8",
                         cache_dir=str(tmp_path))
    first = _first_batches(config)
    files = list(tmp_path.glob("synth-*.npz"))
    assert len(files) == 1

    def no_render(*args, **kwargs):
        raise AssertionError("rendered again")

    monkeypatch.setattr(in_memory, "_read_arrays", no_render)
    again = _first_batches(config)  # this process: the arrays it already holds
    array_cache.clear_memo()
    from_file = _first_batches(config)  # a new process: the .npz
    for a, b, c in zip(first, again, from_file):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["image"], c["image"])
        np.testing.assert_array_equal(a["text"], c["text"])
    # Another batch size, seed, dtype or host (every host holds the whole set) is the same set; another knob
    # or count is not.
    _first_batches(make_config("synth", in_memory=True, in_memory_samples=24, batch_size=4, seed=3,
                               image_dtype="float32", cache_dir=str(tmp_path)))
    _first_batches(make_config("synth", in_memory=True, in_memory_samples=24, batch_size=8, cache_dir=str(tmp_path),
                               process_index=1, process_count=2))
    for other in ({"synth.knobs.max_count": 2}, {"in_memory_samples": 16}):
        overrides = dict(in_memory=True, in_memory_samples=24, batch_size=8, cache_dir=str(tmp_path))
        overrides.update(other)
        with pytest.raises(AssertionError, match="rendered again"):
            _first_batches(make_config("synth", **overrides), 1)


def test_cache_can_be_turned_off_and_survives_a_damaged_file(tmp_path):
    config = make_config("synth", in_memory=True, in_memory_samples=16, batch_size=8, cache_dir="none")
    _first_batches(config, 1)
    assert array_cache.cache_dir(config) is None
    on_disk = make_config("synth", in_memory=True, in_memory_samples=16, batch_size=8, cache_dir=str(tmp_path))
    key = array_cache.cache_key(on_disk, 0, 1)
    (tmp_path / f"synth-{key}.npz").write_bytes(b"not an npz")
    array_cache.clear_memo()
    a = _first_batches(on_disk, 1)[0]  # re-rendered, and the file rewritten
    array_cache.clear_memo()
    b = _first_batches(on_disk, 1)[0]
    np.testing.assert_array_equal(a["image"], b["image"])
    # Other sources are never cached: their files can change under the same path.
    assert array_cache.cache_key(make_config("webdataset", in_memory=True), 0, 1) is None
