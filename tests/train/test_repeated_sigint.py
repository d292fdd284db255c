"""Ctrl-C pressed three times 0.1 s apart while checkpoints are being written: exit 130, one line, no traceback
(Orbax's background threads included), and the run resumes from a checkpoint that verifies."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_three_quick_sigints_exit_130_without_a_traceback_and_the_run_resumes(tmp_path):
    work = tmp_path / "w"
    cmd = [sys.executable, "-m", "vlscale", "train", "--config", "configs/train.py:model=tiny-clip,data=synth",
           "--workdir", str(work), "--no-progress", "--config.global_batch_size=16", "--config.total_samples=1024",
           "--config.warmup=2", "--config.log_every=2", "--config.checkpoint_every=1", "--config.keep_checkpoints=2",
           "--config.data.in_memory=true", "--config.data.in_memory_samples=256", "--config.mesh.devices=1"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
               PYTHONUNBUFFERED="1", VLSCALE_COMPILATION_CACHE=str(tmp_path / "jax_cache"))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (work / "checkpoints" / "3").exists():  # saving a checkpoint every step from here on
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "Exception ignored" not in out, out
    assert out.strip().splitlines()[-1].startswith("vlscale train: "), out

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed at step" in again.stdout
    final = json.loads((work / "final.json").read_text())
    assert final["step"] == 64
