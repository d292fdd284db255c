"""Two processes x 4 CPU devices under jax.distributed (gloo collectives) train like one process x 8 devices on
the default data path (streaming synthetic samples, shuffled and augmented), for three meshes: (data=1, fsdp=8),
(data=1, fsdp=4, tensor=2) and (data=2, fsdp=4). The parameters are split across the processes in the first two.
A SIGKILLed run resumes bit-identical, a checkpoint resumes on another process count and worker count on the same
data stream, and evaluation and captioning of a cross-host checkpoint work on two processes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

STEPS = 6
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# name: (model, data, fsdp, tensor, data workers per process in the 2-process run)
MESHES = {"fsdp8": ("tiny-clip", 1, 8, 1, 2), "fsdp4_tensor2": ("tiny-mammut", 1, 4, 2, 0),
          "data2_fsdp4": ("tiny-clip", 2, 4, 1, 1)}
# Across layouts the collectives sum in another order: float32 rounding, compounded over a few Adam steps.
RTOL = 2e-4


def _cmd(workdir, mesh, workers=0, *extra):
    model, data, fsdp, tensor, _ = MESHES[mesh]
    return [sys.executable, "-m", "vlscale", "train", "--config", f"configs/train.py:model={model},data=synth",
            "--workdir", str(workdir), "--no-progress", "--config.global_batch_size=16",
            f"--config.total_samples={16 * STEPS}", "--config.warmup=2", "--config.log_every=1",
            "--config.checkpoint_every=3", "--config.keep_checkpoints=4", f"--config.data.worker_count={workers}",
            f"--config.mesh.data={data}", f"--config.mesh.fsdp={fsdp}", f"--config.mesh.tensor={tensor}", *extra]


def _env(cache, devices):
    e = dict(os.environ)
    e.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             VLSCALE_COMPILATION_CACHE=str(cache), PYTHONUNBUFFERED="1")
    return e


def _one_process(cache, argv):
    p = subprocess.run(argv, cwd=ROOT, env=_env(cache, 8), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def _start_two(cache, argv):
    port = portpicker.pick_unused_port()
    return [subprocess.Popen(argv + ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                                     "--process-id", str(i)],
                             cwd=ROOT, env=_env(cache, 4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


def _two_processes(cache, argv):
    procs = _start_two(cache, argv)
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    # stdout without gloo's connection notices
    return ["".join(ln for ln in out.splitlines(keepends=True) if not ln.startswith("[Gloo]")) for out, _ in outs]


def _records(workdir):
    return [json.loads(x) for x in open(workdir / "metrics.jsonl") if "loss" in x]


def _losses(workdir):
    return np.array([r["loss"] for r in _records(workdir)])


def _final(workdir):
    return json.loads((workdir / "final.json").read_text())


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Each mesh trained by 1 process x 8 devices (no data workers) and by 2 processes x 4 devices."""
    root = tmp_path_factory.mktemp("matrix")
    cache = root / "jax_cache"
    runs = {}
    for mesh, spec in MESHES.items():
        one, two = root / f"{mesh}_one", root / f"{mesh}_two"
        _one_process(cache, _cmd(one, mesh))
        _two_processes(cache, _cmd(two, mesh, spec[4]))
        runs[mesh] = (one, two)
    return root, cache, runs


@pytest.mark.parametrize("mesh", list(MESHES))
def test_two_processes_train_like_one_on_the_default_data_path(matrix, mesh):
    _, _, runs = matrix
    one, two = runs[mesh]
    assert len(_losses(one)) == STEPS and np.all(np.isfinite(_losses(one)))
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=RTOL)
    assert _final(two)["samples_seen"] == _final(one)["samples_seen"] == 16 * STEPS
    assert _final(two)["params_sha256"] == _params_hash_in_one_process(two, STEPS)
    run = json.loads((two / "run.json").read_text())
    assert run["provenance"]["process_count"] == 2 and run["provenance"]["device_count"] == 8
    # Each process saved its data position: the same global sample for both.
    data_dir = two / "checkpoints" / str(STEPS) / "data"
    states = [json.loads((data_dir / f"process_{i}-of-2.json").read_text()) for i in range(2)]
    assert [s["process_index"] for s in states] == [0, 1]
    assert all(s["samples_seen"] == 16 * STEPS and s["order"] == "global" for s in states)


def test_a_sigkilled_two_process_run_resumes_bit_identical(matrix):
    """(data=1, fsdp=8), parameters split across the processes; killed with 1 data worker instead of 2 (the
    workers do not change the data), resumed, it ends where the uninterrupted run ended, bit for bit."""
    root, cache, runs = matrix
    _, reference = runs["fsdp8"]
    workdir = root / "killed"
    argv = _cmd(workdir, "fsdp8", 1, "--config.checkpoint_every=1")
    procs = _start_two(cache, argv)
    deadline = time.time() + 300
    while (not (workdir / "metrics.jsonl").exists() or len(_records(workdir)) < 3) and time.time() < deadline \
            and all(p.poll() is None for p in procs):
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    errs = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2, f"the run ended before it was killed: {errs[0][-3000:]}"
    assert not (workdir / "final.json").exists()
    _two_processes(cache, argv)
    deterministic = lambda w: [{k: r[k] for k in ("step", "samples_seen", "loss")} for r in _records(w)]  # noqa: E731
    assert deterministic(workdir) == deterministic(reference)
    assert _final(workdir)["params_sha256"] == _final(reference)["params_sha256"]


def _resumable_copy(src, dst, step):
    """``src`` as it was at ``step``: later checkpoints and final.json removed (metrics are cut on resume)."""
    shutil.copytree(src, dst)
    (dst / "final.json").unlink()
    for d in (dst / "checkpoints").iterdir():
        if d.name.isdigit() and int(d.name) > step:
            shutil.rmtree(d)


def test_a_checkpoint_resumes_on_another_process_count_and_worker_count_on_the_same_stream(matrix):
    """Saved by 2 processes, resumed by 1 with 2 data workers; saved by 1 process, resumed by 2 with 1 worker
    each: both continue the same data stream (their losses equal the uninterrupted run's)."""
    root, cache, runs = matrix
    one, two = runs["data2_fsdp4"]
    to_one, to_two = root / "two_to_one", root / "one_to_two"
    _resumable_copy(two, to_one, 3)
    _resumable_copy(one, to_two, 3)
    out = _one_process(cache, _cmd(to_one, "data2_fsdp4", 2))
    assert "resumed at step 3/6" in out
    out = _two_processes(cache, _cmd(to_two, "data2_fsdp4", 1))
    assert "resumed at step 3/6" in out[0]
    for workdir in (to_one, to_two):
        assert _final(workdir)["samples_seen"] == 16 * STEPS
        np.testing.assert_allclose(_losses(workdir), _losses(one), rtol=RTOL)


def _params_hash_in_one_process(workdir, step):
    from vlscale.runtime import checkpoint

    return checkpoint.sha256_of_params(checkpoint.restore_params(workdir / "checkpoints" / str(step)))


def test_parameters_split_over_two_processes_evaluate_and_caption(matrix, tmp_path):
    # (data=1, fsdp=8): CLIP, then `vlscale eval` on both processes; (data=1, fsdp=4, tensor=2): MaMMUT, then
    # `vlscale caption` on both processes. Each gives what one process with all 8 devices gives.
    from PIL import Image

    from vlscale.eval import generative, runner
    from vlscale.eval.encoders import EvalModel
    from vlscale.models import checkpoints, transforms

    _, cache, runs = matrix
    clip, mammut = runs["fsdp8"][1], runs["fsdp4_tensor2"][1]

    out = _two_processes(cache, [sys.executable, "-m", "vlscale", "eval", "--checkpoint", str(clip), "--task",
                                    "zeroshot", "--dataset", "synth:colour", "--num-examples", "48", "--batch-size",
                                    "16", "--out", str(tmp_path / "eval2"), "--results", str(tmp_path / "two.csv")])
    assert out[1].strip() == ""  # the first process reports and writes (a split gloo notice may leave a newline)
    two = json.loads((tmp_path / "eval2" / f"step_{STEPS}" / "zeroshot_synth_colour.json").read_text())
    (one,) = runner.evaluate_checkpoint(clip, [runner.TaskSpec("zeroshot", "synth:colour", num_examples=48)],
                                        out_dir=tmp_path / "eval1", results=tmp_path / "one.csv", batch_size=16)
    assert two["metrics"] == one["metrics"] and two["num_images"] == 48
    assert (tmp_path / "two.csv").read_text() == (tmp_path / "one.csv").read_text()

    images = []
    for i in range(3):
        images.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray((np.random.RandomState(i).rand(40, 40, 3) * 255).astype(np.uint8)).save(images[-1])
    out = _two_processes(cache, [sys.executable, "-m", "vlscale", "caption", "--checkpoint", str(mammut),
                                    "--method", "greedy", "--batch-size", "4", *images])
    ckpt = checkpoints.load(mammut)
    em = EvalModel.create(ckpt.model_name, ckpt.params, dtype="float32")  # caption defaults to fp32
    size = em.config.image_size
    batch = np.stack([transforms.eval_transform(transforms.load_image(p), size=size) for p in images] * 2)[:4]
    want = generative.caption_images(em, batch, method="greedy")[:3]
    assert [ln for ln in out[0].splitlines() if ln.strip()] == [f"{p}\t{c}" for p, c in zip(images, want)] and out[1].strip() == ""
