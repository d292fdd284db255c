"""Worker processes in a process that already holds a JAX runtime (the trainer's situation): never a fork."""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from vlscale.data import iterator

from .conftest import make_config

_FORKS = []  # os.fork calls in this test process (a hook cannot be removed; recording one is harmless)
os.register_at_fork(before=lambda: _FORKS.append(os.getpid()))


def test_worker_processes_start_without_forking_an_initialised_jax():
    assert float(jnp.ones(3).sum()) == 3.0  # JAX's backend is up, as in the trainer
    from jax._src import xla_bridge

    assert xla_bridge.backends_are_initialized()
    forks_before = len(_FORKS)
    inline = make_config("synth", train=True, batch_size=4, image_dtype="uint8")
    with iterator.make_iterator(inline) as it:
        expected = [next(it) for _ in range(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with iterator.make_iterator(make_config("synth", train=True, batch_size=4, image_dtype="uint8",
                                                worker_count=1)) as it:
            got = [next(it) for _ in range(3)]
    assert len(_FORKS) == forks_before, "a worker was started with os.fork"
    assert not [w for w in caught if "os.fork()" in str(w.message)]
    for a, b in zip(expected, got):  # the worker computes exactly what the main process would
        assert b["image"].dtype == np.uint8 and b["image"].shape == (4, 32, 32, 3)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["text"], b["text"])
    assert jax.devices()  # and the parent's runtime is still usable
