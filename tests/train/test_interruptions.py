"""A real ``vlscale train`` process killed at several moments (SIGKILL, also during async saves) or stopped by
SIGTERM resumes to the uninterrupted run's metrics and parameters, bit for bit on CPU."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

DETERMINISTIC = ("step", "samples_seen", "loss", "lr", "grad_norm", "logit_scale")
STEPS = 24


def _cmd(workdir):
    return [sys.executable, "-m", "vlscale", "train", "--config", "configs/train.py:model=tiny-clip,data=synth",
            "--workdir", str(workdir), "--no-progress",
            "--config.global_batch_size=16", f"--config.total_samples={16 * STEPS}", "--config.warmup=2",
            "--config.log_every=1", "--config.checkpoint_every=1", "--config.keep_checkpoints=2",
            "--config.data.in_memory=true", "--config.data.in_memory_samples=256", "--config.mesh.devices=1"]


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ)
    e["VLSCALE_COMPILATION_CACHE"] = str(tmp_path / "jax_cache")  # later processes skip compiling
    e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    e["JAX_PLATFORMS"] = "cpu"
    e["PYTHONUNBUFFERED"] = "1"
    return e


def _lines(workdir):
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.endswith("}"))


def _start_and_stop_after(workdir, env, min_lines, sig):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.Popen(_cmd(workdir), cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.time() + 300
    while _lines(workdir) < min_lines and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    if p.poll() is None:
        p.send_signal(sig)
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


def _deterministic(workdir):
    return [{k: r[k] for k in DETERMINISTIC} for r in map(json.loads, open(workdir / "metrics.jsonl"))]


def test_killed_and_preempted_runs_resume_bit_for_bit(tmp_path, env):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ref = tmp_path / "ref"
    done = subprocess.run(_cmd(ref), cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = json.loads((ref / "final.json").read_text())

    w = tmp_path / "victim"
    # SIGKILL at three moments; with a checkpoint every step most land inside an async save.
    for min_lines in (3, 9, 15):
        rc, _, _ = _start_and_stop_after(w, env, min_lines, signal.SIGKILL)
        assert rc == -signal.SIGKILL
        assert not (w / "final.json").exists()
    # SIGTERM (a preemption notice): checkpoint, then exit 143, resumable and not marked finished.
    rc, out, err = _start_and_stop_after(w, env, 19, signal.SIGTERM)
    assert rc == 143, err[-2000:]
    assert "checkpoint" in out and "re-run the same command" in out
    assert "Traceback" not in err
    assert not (w / "final.json").exists()
    last = json.loads((w / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert (w / "checkpoints" / str(last)).is_dir()
    # No temporary or partial step directory is ever listed as a checkpoint.
    from vlscale.runtime import checkpoint

    assert all(c.path.rstrip("/").split("/")[-1].isdigit() for c in checkpoint.list_checkpoints(w))

    rc = subprocess.run(_cmd(w), cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert rc.returncode == 0, rc.stderr[-2000:]
    assert json.loads((w / "final.json").read_text()) == reference
    assert _deterministic(w) == _deterministic(ref)
