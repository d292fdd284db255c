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


_KILLED_PARENT = """
import sys, time
sys.path.insert(0, {root!r})
from tests.data.conftest import make_config
from vlscale.data import iterator

if __name__ == "__main__":
    it = iterator.make_iterator(make_config("synth", batch_size=4, image_dtype="uint8", worker_count=2))
    next(it)
    print("ready", flush=True)
    time.sleep(600)
"""


def _children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return b""


def _alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_exit_when_their_trainer_is_killed(tmp_path):
    """SIGKILL of the process that owns the workers (the OOM killer, a scheduler) leaves no orphan decoding on."""
    import signal
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "parent.py"
    script.write_text(_KILLED_PARENT.format(root=root))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    p = subprocess.Popen([sys.executable, str(script)], cwd=root, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    assert p.stdout.readline().strip() == "ready"
    workers = [c for c in _children(p.pid) if _alive(c) and b"resource_tracker" not in _cmdline(c)]
    assert len(workers) >= 2  # grain's spawned workers (its resource tracker is not one)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    deadline = time.time() + 30
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not [w for w in workers if _alive(w)], "data workers outlived their trainer"
