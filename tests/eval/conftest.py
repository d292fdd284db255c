"""Eval test fixtures: random-init converted checkpoints and fake trainer workdirs (run.json + checkpoints/N)."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from vlscale.models import registry, saved_params
from vlscale.models.flops import gflops

# Evaluations turn on the persistent compilation cache (vlscale.eval.runner.use_compilation_cache): in tests it is
# the session's temporary one (tests/conftest.py), never the user's.
os.environ.setdefault("VLSCALE_COMPILATION_CACHE", "none")

BATCH = 16  # one eval batch size for every test: one compiled shape per function


def perturbed_params(name, seed=0, scale=0.02):
    """Random init plus noise on every leaf, so MaMMUT's zero-initialised LM head gives distinct likelihoods."""
    params = registry.init_params(registry.build_model(name), seed)
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    leaves = [np.asarray(a) + scale * rng.standard_normal(np.shape(a)).astype(np.float32) for a in leaves]
    return jax.tree.unflatten(tree, leaves)


@pytest.fixture(scope="session")
def clip_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip") / "ckpt"
    saved_params.save_params(d, perturbed_params("tiny-clip"), "tiny-clip")
    return d


@pytest.fixture(scope="session")
def mammut_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("mammut") / "ckpt"
    saved_params.save_params(d, perturbed_params("tiny-mammut", seed=1), "tiny-mammut")
    return d


def make_workdir(root, converted, model, *, schedule="cosine", steps=(10, 20, 30), final=True, warmup=10,
                 batch=32, run_model=None):
    """A trainer-shaped workdir whose step directories hold a converted checkpoint."""
    root.mkdir(parents=True, exist_ok=True)
    for s in steps:
        shutil.copytree(converted, root / "checkpoints" / str(s))
    total = steps[-1] * batch
    run = {"run": root.name, "model": run_model or model, "model_type": "mammut" if "mammut" in model else "clip",
           "pretrain_dataset": "synth", "lr_scheduler": schedule, "samples_seen": total,
           "gflops_per_sample": gflops(model), "global_batch_size": batch, "lr": 1e-3, "warmup": warmup, "seed": 0,
           "init_from": None, "config": {"data": {"synth": {"knobs": {"image_size": 32}}}}, "provenance": {}}
    (root / "run.json").write_text(json.dumps(run))
    if final:
        (root / "final.json").write_text(json.dumps({"step": steps[-1], "samples_seen": total, "loss": 1.0,
                                                     "params_sha256": ""}))
    return root
