"""Two processes x 4 CPU devices under jax.distributed (gloo collectives) evaluate like one process x 8 devices:
each host loads its rows of every batch, the per-example results are all-gathered, and the metrics are equal."""

import json
import os
import subprocess
import sys

import numpy as np
import portpicker
import pytest
from PIL import Image

from tests.eval.conftest import perturbed_params
from vlscale.models import saved_params

# One worker: evaluates the checkpoint on padded sets (40, 24 and 20 examples, global batch 16), then the folder again
# as a later checkpoint would, and writes its metrics and how many files it decoded after each.
WORKER = """
import json, sys
from vlscale.runtime import distributed
ckpt, out, n, pid, addr = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if n > 1:
    distributed.initialize(addr, n, pid)
import jax
from vlscale.eval import evaluate_checkpoint
from vlscale.models import transforms
decoded, load_image = [], transforms.load_image
transforms.load_image = lambda src, *a, **k: decoded.append(str(src)) or load_image(src, *a, **k)
tasks = [("zeroshot", "synth:colour", {"num_examples": 40}), ("retrieval", "synth:retrieval", {"num_examples": 24}),
         ("zeroshot", "folder:" + sys.argv[6])]
recs = evaluate_checkpoint(ckpt, tasks, out_dir=out, batch_size=16, log=lambda m: None)
first = len(decoded)
again = evaluate_checkpoint(ckpt, tasks[2:], out_dir=out, batch_size=16, log=lambda m: None)  # a later checkpoint
json.dump({"processes": jax.process_count(), "devices": jax.device_count(), "local": jax.local_device_count(),
           "metrics": {r["spec"]: r["metrics"] for r in recs},
           "counts": {r["spec"]: [r["num_images"], r["skipped_images"]] for r in recs},
           "again": again[0]["metrics"], "decoded": [first, len(decoded)]}, open(out + ".json", "w"))
"""


def _env(devices, cache):
    e = dict(os.environ)
    e.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             VLSCALE_COMPILATION_CACHE="none", VLSCALE_EVAL_CACHE=str(cache))
    return e


@pytest.mark.slow
def test_two_processes_give_the_metrics_of_one(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ckpt = tmp_path / "ckpt"
    saved_params.save_params(ckpt, perturbed_params("tiny-clip"), "tiny-clip")
    folder = tmp_path / "photos"  # 20 files: host 0 loads rows 0-7 and 16-19, host 1 rows 8-15 (global batch 16)
    rng = np.random.default_rng(0)
    for i in range(20):
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(folder / f"c{i % 2}" / f"{i}.png")
    cmd = lambda out, n, pid, addr="": [sys.executable, "-c", WORKER, str(ckpt), str(out), str(n), str(pid), addr,  # noqa: E731
                                        str(folder)]
    one = subprocess.run(cmd(tmp_path / "one", 1, 0), cwd=root, env=_env(8, "none"), capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    addr = f"127.0.0.1:{portpicker.pick_unused_port()}"
    cache = tmp_path / "cache"  # one folder for both hosts, as on a shared file system: each keeps its own share
    procs = [subprocess.Popen(cmd(tmp_path / f"two_{i}", 2, i, addr), cwd=root, env=_env(4, cache),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    ref = json.loads((tmp_path / "one.json").read_text())
    assert (ref["processes"], ref["devices"]) == (1, 8)
    assert ref["counts"] == {"synth:colour": [40, 0], "synth:retrieval": [24, 0], f"folder:{folder}": [20, 0]}
    assert 0 < ref["metrics"]["synth:retrieval"]["image_retrieval_recall@10"] < 1  # random weights: not trivial
    assert ref["decoded"] == [20, 40] and ref["again"] == ref["metrics"][f"folder:{folder}"]  # no cache: twice
    for i in range(2):
        got = json.loads((tmp_path / f"two_{i}.json").read_text())
        assert (got["processes"], got["devices"], got["local"]) == (2, 8, 4)
        assert got["counts"] == ref["counts"]
        # Each host decodes its own rows once; the later checkpoint reads them from the cache, same metrics.
        assert got["decoded"] == [[12, 12], [8, 8]][i]
        assert got["again"] == pytest.approx(ref["metrics"][f"folder:{folder}"], abs=1e-6)
        for task, metrics in ref["metrics"].items():
            assert got["metrics"][task].keys() == metrics.keys()
            for name, value in metrics.items():
                assert got["metrics"][task][name] == pytest.approx(value, abs=1e-6), (task, name)
    assert len(list(cache.glob("*.npy"))) == 2 and not list(cache.glob(".*partial*"))  # one complete share per host
