"""A fake trainer and evaluator honouring the trainer/evaluator contracts (file layout, resume, results rows), so
the study's plan/run/resume/report logic is tested in seconds without JAX training.

The fake "error" follows a known law per model type, err = d + a * (C / 0.1)^c, with a small seeded wobble, so fits have
something real to find: MaMMUT's law is below CLIP's at large compute.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import ml_collections

LAWS = {"clip": (0.15, 0.8, -0.25), "mammut": (0.10, 0.85, -0.30)}  # d, a, c; C in units of 0.1 GFLOPs
BENCHES = (("synth_colour_shape", "acc1"), ("synth_retrieval", "image_retrieval_recall@5"))
FIELDS = ("pretrain_dataset", "lr_scheduler", "downstream_dataset", "metric", "model_type", "model", "samples_seen",
          "gflops_per_sample", "compute_gflops", "value", "samples_seen_actual", "compute_gflops_actual", "lr",
          "global_batch_size", "warmup", "run", "step")


def config_fn(cfg, run, study_dir):
    """Stands in for build_train_config (configs/train.py): the run identity as a ConfigDict."""
    from vlscale.study.runner import init_path

    return ml_collections.ConfigDict({
        "model": run.model, "model_type": run.model_type, "global_batch_size": run.global_batch_size,
        "total_samples": run.samples, "lr": run.lr, "warmup": run.warmup, "schedule": run.schedule,
        "cooldown_steps": run.cooldown_steps, "init_from": init_path(Path(study_dir), run), "seed": run.seed,
        "checkpoint_at_samples": list(run.checkpoint_at_samples), "pretrain_dataset": run.dataset,
        "run_name": run.name, "gflops_per_sample": run.gflops_per_sample})


def _family(config) -> str:
    """From the fake config, or (a real configs/train.py config) from the model's config."""
    if "model_type" in config:
        return config.model_type
    from vlscale.models.config import get_config

    return get_config(config.model).family


def _gflops(config) -> float:
    if "gflops_per_sample" in config:
        return config.gflops_per_sample
    from vlscale.models import flops

    return flops.forward_flops(config.model).paper / 1e9


class Killed(KeyboardInterrupt):
    """What a kill looks like to the runner (it re-raises KeyboardInterrupt and stops)."""


class FakeTrainer:
    """Writes run.json, metrics.jsonl, checkpoints/N/ and final.json; resumes from the newest checkpoint.

    ``kill_after_steps``: raise Killed once this many steps were trained in total over all calls (a kill midway).
    ``fail``: run names whose training raises.
    """

    def __init__(self, checkpoint_every: int = 4, kill_after_steps: int | None = None, fail=()):
        self.every = checkpoint_every
        self.kill_after = kill_after_steps
        self.fail = set(fail)
        self.steps_done = 0
        self.calls = []

    def __call__(self, config, workdir, *, steps=None, progress=None):
        wd = Path(workdir)
        self.calls.append(config.run_name)
        if config.run_name in self.fail:
            raise RuntimeError("loss is NaN at step 3")
        bs = config.global_batch_size
        total = math.ceil(config.total_samples / bs)
        milestones = {s // bs for s in config.checkpoint_at_samples}
        ck = wd / "checkpoints"
        done = [int(p.name) for p in ck.iterdir()] if ck.is_dir() else []
        start = max(done, default=0)
        if config.init_from and not done:
            start = int(Path(config.init_from).name)
            assert Path(config.init_from).is_dir(), config.init_from
        (wd / "run.json").write_text(json.dumps({
            "run": config.run_name, "model": config.model, "model_type": _family(config),
            "pretrain_dataset": config.pretrain_dataset, "lr_scheduler": config.schedule,
            "samples_seen": config.total_samples, "gflops_per_sample": _gflops(config),
            "global_batch_size": bs, "lr": config.lr, "warmup": config.warmup, "seed": config.seed,
            "init_from": config.init_from, "checkpoint_at_samples": list(config.checkpoint_at_samples)}))
        with open(wd / "metrics.jsonl", "a") as f:
            for step in range(start + 1, total + 1):
                f.write(json.dumps({"step": step, "samples_seen": step * bs, "loss": 3.0 / step}) + "\n")
                if step % self.every == 0 or step in milestones or step == total:
                    (ck / str(step)).mkdir(parents=True, exist_ok=True)
                    (ck / str(step) / "state.json").write_text(json.dumps({"step": step}))
                self.steps_done += 1
                if self.kill_after is not None and self.steps_done >= self.kill_after:
                    self.kill_after = None
                    raise Killed()
        final = {"step": total, "samples_seen": total * bs, "loss": round(3.0 / total, 6), "params_sha256": "x"}
        (wd / "final.json").write_text(json.dumps(final))
        return final


def fake_error(model_type: str, compute: float, seed: int, bench: int) -> float:
    d, a, c = LAWS[model_type]
    wobble = 0.004 * math.sin(7.0 * math.log(compute) + 1.3 * seed + bench)
    return min(0.999, d + a * (compute / 0.1) ** c + wobble)


def fake_eval(workdir, suite="synth", *, results=None, all_checkpoints=False):
    """Rows for the checkpoints the protocol needs (final; every milestone past warm-up for const); idempotent."""
    wd = Path(workdir)
    run = json.loads((wd / "run.json").read_text())
    bs = run["global_batch_size"]
    steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir())
    if run["lr_scheduler"] == "const":
        wanted = [s for s in steps if s * bs in run["checkpoint_at_samples"] and s > run["warmup"]]
    else:
        wanted = [steps[-1]]
    results = Path(results or wd / "results.csv")
    have = set()
    if results.is_file():
        with open(results) as f:
            have = {int(r["step"]) for r in csv.DictReader(f)}
    new = []
    for s in wanted:
        if s in have:
            continue
        samples = s * bs
        compute = run["gflops_per_sample"] * samples
        for i, (ds, metric) in enumerate(BENCHES):
            err = fake_error(run["model_type"], compute, run["seed"], i)
            new.append({"pretrain_dataset": run["pretrain_dataset"], "lr_scheduler": run["lr_scheduler"],
                        "downstream_dataset": ds, "metric": metric, "model_type": run["model_type"],
                        "model": run["model"], "samples_seen": samples, "gflops_per_sample": run["gflops_per_sample"],
                        "compute_gflops": compute, "value": round(1 - err, 6), "samples_seen_actual": samples,
                        "compute_gflops_actual": compute, "lr": run["lr"], "global_batch_size": bs,
                        "warmup": run["warmup"], "run": run["run"], "step": s})
    write_header = not results.is_file()
    with open(results, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if write_header:
            w.writeheader()
        w.writerows(new)
    return new
