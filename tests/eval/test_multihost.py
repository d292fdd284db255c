"""Two processes x 4 CPU devices under jax.distributed (gloo collectives) evaluate like one process x 8 devices:
each host loads its rows of every batch, the per-example results are all-gathered, and the metrics are equal."""

import json
import os
import subprocess
import sys

import portpicker
import pytest

from tests.eval.conftest import perturbed_params
from vlscale.models import saved_params

# One worker: evaluates the checkpoint on padded sets (40 and 24 examples, global batch 16) and writes its metrics.
WORKER = """
import json, sys
from vlscale.runtime import distributed
ckpt, out, n, pid, addr = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if n > 1:
    distributed.initialize(addr, n, pid)
import jax
from vlscale.eval import evaluate_checkpoint
tasks = [("zeroshot", "synth:colour", {"num_examples": 40}), ("retrieval", "synth:retrieval", {"num_examples": 24})]
recs = evaluate_checkpoint(ckpt, tasks, out_dir=out, batch_size=16, log=lambda m: None)
json.dump({"processes": jax.process_count(), "devices": jax.device_count(), "local": jax.local_device_count(),
           "metrics": {r["task"]: r["metrics"] for r in recs},
           "counts": {r["task"]: [r["num_images"], r["skipped_images"]] for r in recs}}, open(out + ".json", "w"))
"""


def _env(devices):
    e = dict(os.environ)
    e.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             VLSCALE_COMPILATION_CACHE="none")
    return e


@pytest.mark.slow
def test_two_processes_give_the_metrics_of_one(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ckpt = tmp_path / "ckpt"
    saved_params.save_params(ckpt, perturbed_params("tiny-clip"), "tiny-clip")
    cmd = lambda out, n, pid, addr="": [sys.executable, "-c", WORKER, str(ckpt), str(out), str(n), str(pid), addr]  # noqa: E731
    one = subprocess.run(cmd(tmp_path / "one", 1, 0), cwd=root, env=_env(8), capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    addr = f"127.0.0.1:{portpicker.pick_unused_port()}"
    procs = [subprocess.Popen(cmd(tmp_path / f"two_{i}", 2, i, addr), cwd=root, env=_env(4), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    ref = json.loads((tmp_path / "one.json").read_text())
    assert (ref["processes"], ref["devices"]) == (1, 8)
    assert ref["counts"] == {"zeroshot": [40, 0], "retrieval": [24, 0]}
    assert 0 < ref["metrics"]["retrieval"]["image_retrieval_recall@10"] < 1  # random weights: not a trivial number
    for i in range(2):
        got = json.loads((tmp_path / f"two_{i}.json").read_text())
        assert (got["processes"], got["devices"], got["local"]) == (2, 8, 4)
        assert got["counts"] == ref["counts"]
        for task, metrics in ref["metrics"].items():
            assert got["metrics"][task].keys() == metrics.keys()
            for name, value in metrics.items():
                assert got["metrics"][task][name] == pytest.approx(value, abs=1e-6), (task, name)
