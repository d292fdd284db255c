"""Two processes x 4 CPU devices under jax.distributed (gloo collectives) train like one process x 8 devices:
the same losses, disjoint data shares, and checkpoints written by both processes."""

import json
import os
import subprocess
import sys

import numpy as np
import portpicker

STEPS = 6


def _cmd(workdir, *extra):
    return [sys.executable, "-m", "vlscale", "train", "--config", "configs/train.py:model=tiny-clip,data=synth",
            "--workdir", str(workdir), "--no-progress", "--config.global_batch_size=16",
            f"--config.total_samples={16 * STEPS}", "--config.warmup=2", "--config.log_every=1",
            "--config.checkpoint_every=3", "--config.data.in_memory=true", "--config.data.in_memory_samples=256",
            # Unshuffled, host i holds records i::2 and its batch k is records 16k+i, 16k+i+2, ...: the global
            # batch is then the single process's batch in another row order (the losses do not depend on it).
            "--config.data.shuffle=false", "--config.mesh.data=2", "--config.mesh.fsdp=4", *extra]


def _env(tmp_path, devices):
    e = dict(os.environ)
    e.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             VLSCALE_COMPILATION_CACHE="none")
    return e


def test_two_processes_equal_one(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    one = subprocess.run(_cmd(tmp_path / "one"), cwd=root, env=_env(tmp_path, 8), capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    port = portpicker.pick_unused_port()
    procs = [subprocess.Popen(_cmd(tmp_path / "two", "--coordinator-address", f"127.0.0.1:{port}",
                                   "--num-processes", "2", "--process-id", str(i)),
                              cwd=root, env=_env(tmp_path, 4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]

    losses = lambda w: np.array([json.loads(x)["loss"] for x in open(w / "metrics.jsonl")])  # noqa: E731
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=2e-5)
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["provenance"]["process_count"] == 2 and run["provenance"]["device_count"] == 8
    # Each process saved its own data position; the two shares are disjoint halves of the stream.
    data_dir = tmp_path / "two" / "checkpoints" / str(STEPS) / "data"
    states = [json.loads((data_dir / f"process_{i}-of-2.json").read_text()) for i in range(2)]
    assert [s["process_index"] for s in states] == [0, 1]
    assert all(s["samples_seen"] == 16 * STEPS for s in states)
    assert states[0]["batches"] == states[1]["batches"] == STEPS
    final_one = json.loads((tmp_path / "one" / "final.json").read_text())
    final_two = json.loads((tmp_path / "two" / "final.json").read_text())
    assert final_two["samples_seen"] == final_one["samples_seen"] == 16 * STEPS
