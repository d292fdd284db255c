"""A full disk, for real: training into a 20 MB tmpfs (the first checkpoint fits, the second does not) and
`vlscale convert --to-open-clip` onto a full one each exit 2 with one line naming the file system and the file,
print no traceback, and leave the last good checkpoint intact (it loads and verifies).

The tmpfs is mounted by the test: the test machine runs as root. Where mount is not permitted the test fails
saying so (a simulated ENOSPC would not reach TensorStore's own writes, which is what this checks).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlscale.models import checkpoints

ROOT = Path(__file__).resolve().parents[2]


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    mounted = _mount_tmpfs(disk, "20m")
    yield disk, mounted
    if mounted:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _vlscale(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "vlscale", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_training_and_export_onto_a_full_disk_are_one_line(small_disk, tmp_path):
    disk, mounted = small_disk
    if not mounted:
        pytest.fail("mount -t tmpfs is not permitted here; this test needs root (the CI machine is)")
    w = disk / "w"
    r = _vlscale("train", "--config", "configs/train.py:model=tiny-clip,data=synth", "--workdir", str(w),
                 "--no-progress", "--config.global_batch_size=16", "--config.total_samples=1600", "--config.warmup=2",
                 "--config.log_every=1", "--config.checkpoint_every=4", "--config.keep_checkpoints=100",
                 "--config.data.in_memory=true", "--config.data.in_memory_samples=256", "--config.mesh.devices=1",
                 f"--config.compilation_cache={tmp_path / 'cache'}")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr + r.stdout and "internal error" not in r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"vlscale train: error: no space left on {disk} while writing {w / 'checkpoints'}/")
    assert err[0].endswith(f"; the last good checkpoint is {w / 'checkpoints' / '4'}")
    good = checkpoints.load(w)  # the checksums of every array still match
    assert good.step == 4 and good.model_name == "tiny-clip"

    # The disk is still full: an export onto it is the same one line, and leaves no partial file.
    out = disk / "exported.safetensors"
    r = _vlscale("convert", "--to-open-clip", str(w), "--out", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [f"vlscale convert: error: no space left on {disk} while writing {out}"]
    assert not out.exists() and not [p for p in disk.iterdir() if p.name.startswith(".exported")]
