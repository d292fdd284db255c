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


# --- parameters split across the processes ---------------------------------------------------------------------
# mesh.data=1: no process holds a whole copy of the parameters, so final.json's hash, evaluation and captioning must
# gather them. These runs use the default data path (streaming synthetic samples, shuffled). Its batches still depend
# on the process layout (1 x 8 and 2 x 4 differ from step 1; the data pipeline's issue), so the 2-process hash is
# compared with the hash of the same checkpoint read back in this one process, not with a 1 x 8 run's.
SPLIT_STEPS = 2


def _split_cmd(workdir, model, fsdp, tensor):
    return [sys.executable, "-m", "vlscale", "train", "--config", f"configs/train.py:model={model},data=synth",
            "--workdir", str(workdir), "--no-progress", "--config.global_batch_size=16",
            f"--config.total_samples={16 * SPLIT_STEPS}", "--config.warmup=1", "--config.log_every=1",
            "--config.mesh.data=1", f"--config.mesh.fsdp={fsdp}", f"--config.mesh.tensor={tensor}"]


def _two_processes(tmp_path, argv):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    port = portpicker.pick_unused_port()
    procs = [subprocess.Popen(argv + ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                                      "--process-id", str(i)],
                              cwd=root, env=_env(tmp_path, 4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    # stdout without gloo's connection notices
    return ["".join(ln for ln in out.splitlines(keepends=True) if not ln.startswith("[Gloo]")) for out, _ in outs]


def _params_hash_in_one_process(workdir, step):
    from vlscale.runtime import checkpoint

    return checkpoint.sha256_of_params(checkpoint.restore_params(workdir / "checkpoints" / str(step)))


def test_parameters_split_over_two_processes_hash_evaluate_and_caption(tmp_path):
    # (data=1, fsdp=8): CLIP, then `vlscale eval` on both processes; (data=1, fsdp=4, tensor=2): MaMMUT, then
    # `vlscale caption` on both processes. Each gives what one process with all 8 devices gives.
    from PIL import Image

    from vlscale.eval import generative, runner
    from vlscale.eval.encoders import EvalModel
    from vlscale.models import checkpoints, transforms

    clip, mammut = tmp_path / "clip", tmp_path / "mammut"
    _two_processes(tmp_path, _split_cmd(clip, "tiny-clip", 8, 1))
    _two_processes(tmp_path, _split_cmd(mammut, "tiny-mammut", 4, 2))
    for workdir in (clip, mammut):
        final = json.loads((workdir / "final.json").read_text())
        assert final["step"] == SPLIT_STEPS and final["samples_seen"] == 16 * SPLIT_STEPS
        assert final["params_sha256"] == _params_hash_in_one_process(workdir, SPLIT_STEPS)
        losses = [json.loads(x)["loss"] for x in open(workdir / "metrics.jsonl")]
        assert len(losses) == SPLIT_STEPS and np.all(np.isfinite(losses))

    out = _two_processes(tmp_path, [sys.executable, "-m", "vlscale", "eval", "--checkpoint", str(clip), "--task",
                                    "zeroshot", "--dataset", "synth:colour", "--num-examples", "48", "--batch-size",
                                    "16", "--out", str(tmp_path / "eval2"), "--results", str(tmp_path / "two.csv")])
    assert out[1] == ""  # the first process reports and writes
    two = json.loads((tmp_path / "eval2" / f"step_{SPLIT_STEPS}" / "zeroshot_synth_colour.json").read_text())
    (one,) = runner.evaluate_checkpoint(clip, [runner.TaskSpec("zeroshot", "synth:colour", num_examples=48)],
                                        out_dir=tmp_path / "eval1", results=tmp_path / "one.csv", batch_size=16)
    assert two["metrics"] == one["metrics"] and two["num_images"] == 48
    assert (tmp_path / "two.csv").read_text() == (tmp_path / "one.csv").read_text()

    images = []
    for i in range(3):
        images.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray((np.random.RandomState(i).rand(40, 40, 3) * 255).astype(np.uint8)).save(images[-1])
    out = _two_processes(tmp_path, [sys.executable, "-m", "vlscale", "caption", "--checkpoint", str(mammut),
                                    "--method", "greedy", "--batch-size", "4", *images])
    ckpt = checkpoints.load(mammut)
    em = EvalModel.create(ckpt.model_name, ckpt.params)
    size = em.config.image_size
    batch = np.stack([transforms.eval_transform(transforms.load_image(p), size=size) for p in images] * 2)[:4]
    want = generative.caption_images(em, batch, method="greedy")[:3]
    assert out[0].splitlines() == [f"{p}\t{c}" for p, c in zip(images, want)] and out[1] == ""
