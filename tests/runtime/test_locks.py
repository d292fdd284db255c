"""One writer per folder: a second process is refused in one line naming the holder; a dead holder's lock is
taken over; `vlscale train` and `vlscale study run` take it (two real processes each)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlscale.runtime import locks

ROOT = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time; from vlscale.runtime import locks\n"
        "with locks.exclusive(sys.argv[1], command='holder'):\n"
        "    print('ready', flush=True); time.sleep(600)\n")


@pytest.fixture
def holder(tmp_path):
    """A separate process holding tmp_path/'w''s lock until killed."""
    folder = tmp_path / "w"
    folder.mkdir()
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "ready"
    yield folder, p
    if p.poll() is None:
        p.kill()
        p.wait()


def test_second_writer_is_refused_naming_host_and_pid(holder):
    folder, p = holder
    with pytest.raises(locks.Busy) as e:
        with locks.exclusive(folder, flag="--workdir"):
            pass
    msg = str(e.value)
    assert "\n" not in msg and f"pid {p.pid} on host {socket.gethostname()}" in msg and "(holder)" in msg
    assert msg.startswith(f"--workdir {folder} is in use by")


def test_a_dead_holders_lock_is_taken_over(holder):
    folder, p = holder
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert locks.read_holder(folder)["pid"] == p.pid  # its record stays, its lock went with it
    with locks.exclusive(folder, command="me") as previous:
        assert previous["pid"] == p.pid
        assert locks.read_holder(folder)["pid"] == os.getpid()
    with locks.exclusive(folder) as previous:  # released on exit; our own old record is no take-over
        assert previous is None


def test_remote_paths_are_not_locked():
    with locks.exclusive("gs://bucket/run") as previous:
        assert previous is None


def _cli(args, env_extra=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, "-m", "vlscale", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_second_vlscale_train_on_a_workdir_exits_2_in_one_line(holder):
    folder, p = holder
    r = _cli(["train", "--config", "configs/train.py:model=tiny-clip,data=synth", "--workdir", str(folder),
              "--no-progress", "--config.total_samples=64", "--config.global_batch_size=16",
              "--config.data.in_memory=true", "--config.data.in_memory_samples=64", "--config.mesh.devices=1"])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and f"is in use by pid {p.pid} on host {socket.gethostname()}" in lines[0], r.stderr
    assert not (folder / "checkpoints").exists() and not (folder / "run.json").exists()


def test_second_vlscale_study_on_a_dir_exits_2_in_one_line(holder):
    folder, p = holder
    r = _cli(["study", "run", "--config", "configs/study/micro_shapes.py", "--dir", str(folder)])
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr and f"--dir {folder} is in use by pid {p.pid}" in last, r.stderr
    assert json.loads((folder / locks.LOCK_NAME).read_text())["pid"] == p.pid
