"""The fitter's traced programs cached on disk (``scaling.trace_cache``): same numbers, no tracing when warm,
robust to a corrupt or unwritable cache, never used for forms a user registers at run time."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vlscale.scaling import fit as fit_lib
from vlscale.scaling import forms as forms_lib
from vlscale.scaling import trace_cache
from vlscale.runtime import compilation_cache as jax_cache


def _law(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = np.geomspace(1e8, 1e11, n)
    y = 0.2 + 3.0 * x ** -0.12 * np.exp(rng.normal(0, 0.01, n))
    return x, y


def _fit(form="saturation_both", seed=0):
    x, y = _law(seed=seed)
    f = forms_lib.get_form(form)
    xs, ys = np.stack([x, x]), np.stack([y, y * 1.01])
    return fit_lib.fit_weighted_sets(form, xs, ys, np.ones_like(ys), f.init_grid(x, y))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The trace cache on, in a fresh directory (as api.fit turns it on), and its in-memory tables empty."""
    monkeypatch.setitem(jax_cache._state, "dir", tmp_path)
    for pj in (fit_lib._fit_sets_best,):
        monkeypatch.setattr(pj, "_loaded", {})
    return tmp_path / trace_cache.SUBDIR


def test_cached_fit_equals_the_plain_jit_and_a_warm_process_does_not_trace(cache, monkeypatch):
    monkeypatch.setitem(jax_cache._state, "dir", None)
    plain = _fit()
    assert not cache.exists()  # cache off: nothing written
    monkeypatch.setitem(jax_cache._state, "dir", cache.parent)
    cold = _fit()
    files = sorted(cache.glob("*.bin"))
    assert len(files) == 1 and files[0].stat().st_size > 1000
    fit_lib._fit_sets_best._loaded.clear()  # as in a new process: only the file is left

    def no_tracing(*a, **k):
        raise AssertionError("traced although the cache holds this program")

    from jax import export
    monkeypatch.setattr(export, "export", no_tracing)
    warm = _fit()
    for k in ("theta", "objective", "mse", "converged"):
        np.testing.assert_allclose(cold[k], plain[k], rtol=1e-12, atol=0, err_msg=k)
        np.testing.assert_array_equal(warm[k], cold[k], err_msg=k)


def test_other_shapes_get_their_own_entry(cache):
    _fit()
    x, y = _law(n=40)
    fit_lib.fit_weighted_sets("saturation_both", x[None], y[None], np.ones((1, 40)),
                              forms_lib.get_form("saturation_both").init_grid(x, y))
    assert len(list(cache.glob("*.bin"))) == 2


def test_a_corrupt_entry_is_traced_again_and_replaced(cache):
    first = _fit()
    (entry,) = cache.glob("*.bin")
    entry.write_bytes(b"not a flatbuffer")
    fit_lib._fit_sets_best._loaded.clear()
    again = _fit()
    np.testing.assert_array_equal(again["theta"], first["theta"])
    assert entry.stat().st_size > 1000  # rewritten


def test_an_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the cache folder should be: every write fails
    monkeypatch.setitem(jax_cache._state, "dir", blocker)
    monkeypatch.setattr(fit_lib._fit_sets_best, "_loaded", {})
    out = _fit()
    assert np.all(np.isfinite(out["theta"])) and blocker.is_file()


def test_a_form_registered_at_run_time_is_never_cached(cache, monkeypatch):
    custom = dataclasses.replace(forms_lib.get_form("saturation_both"), name="my_saturation")
    monkeypatch.setitem(forms_lib.FORMS, custom.name, custom)
    _fit("my_saturation")
    assert not cache.exists() or not list(cache.glob("*.bin"))
    # a user form that reuses a built-in's name is not the shipped code either
    monkeypatch.setitem(forms_lib.FORMS, "saturation_both", custom)
    assert not trace_cache._cacheable_form({"form_name": "saturation_both"})


def test_the_key_changes_with_the_sources(monkeypatch):
    pj = fit_lib._fit_sets_best
    args = (np.zeros(3), np.zeros((2, 3)))
    k1 = pj._key(args, {"form_name": "power"})
    monkeypatch.setattr(trace_cache, "source_fingerprint", lambda: "edited")
    assert pj._key(args, {"form_name": "power"}) != k1
    assert pj._key(args, {"form_name": "saturation"}) != pj._key(args, {"form_name": "power"})
