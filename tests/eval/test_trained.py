"""Briefly trained tiny CLIP and MaMMUT (the real trainer, real Orbax checkpoints) beat chance on synth:colour.

The runs train on an easy corner of the synthetic data (4 well-separated colours, 2 shapes, one large object, no
noise or distractors) so 100 steps suffice on a CPU; ``synth:`` datasets are generated from the run's own
``data.synth.knobs``, so the evaluation sees the same 4 colours (chance 0.25).
"""

import pytest

from tests.train.conftest import tiny_config
from vlscale.eval import evaluate_run
from vlscale.scaling.results import load_results
from vlscale.train import run

pytestmark = pytest.mark.slow

KNOBS = {"image_size": 32, "colours": ["red", "green", "blue", "yellow"], "shapes": ["circle", "square"],
         "sizes": ["large"], "max_count": 1, "noise_max": 0.0, "clutter_max": 0, "distractor_prob": 0.0,
         "background_kinds": ["solid"], "p_mention_colour": 1.0}
STEPS = 100
TASKS = [("zeroshot", "synth:colour", {"num_examples": 64}), ("retrieval", "synth:retrieval", {"num_examples": 32})]
CHANCE = {"acc1": 1 / 4, "image_retrieval_recall@10": 10 / 32}


def train(workdir, model):
    cfg = tiny_config(model, batch=32, steps=STEPS, lr=3e-3, warmup=5, log_every=50, checkpoint_every=STEPS,
                      mesh__devices=1)
    cfg.data.synth.knobs = KNOBS
    cfg.data.in_memory_samples = 1024
    run(cfg, workdir)
    return workdir


@pytest.mark.parametrize("model", ["tiny-clip", "tiny-mammut"])
def test_briefly_trained_models_beat_chance_and_rows_land_once(tmp_path, model):
    w = train(tmp_path / model, model)
    tasks = TASKS + ([("generative", "synth:colour", {"num_examples": 64})] if "mammut" in model else [])
    recs = {r["task"]: r for r in evaluate_run(w, tasks, batch_size=32, log=lambda m: None)}
    acc1 = recs["zeroshot"]["metrics"]["acc1"]
    recall = recs["retrieval"]["metrics"]["image_retrieval_recall@10"]
    assert acc1 > CHANCE["acc1"] + 0.1, acc1  # 4 classes, 64 images: +0.1 is about 2 standard errors
    assert recall > CHANCE["image_retrieval_recall@10"] + 0.1, recall
    if "mammut" in model:
        assert set(recs["generative"]["metrics"]) == {"generative_acc1", "generative_acc5", "generative_mean_acc1"}
    assert evaluate_run(w, tasks, batch_size=32, log=lambda m: None) == []  # idempotent: nothing left to do
    df = load_results(w / "results.csv")
    assert set(df["step"]) == {STEPS} and set(df["samples_seen"]) == {32 * STEPS}
    assert set(df["downstream_dataset"]) == {"synth_colour", "synth_retrieval"}
    assert set(df["model_type"]) == {model.split("-")[1]} and (df["compute_gflops"] > 0).all()


def test_relative_workdir_trains_and_evaluates(tmp_path, monkeypatch):
    """Orbax's OCDBT store refuses relative paths; the trainer and `vlscale eval --checkpoint REL` make them absolute."""
    from vlscale.cli import main

    monkeypatch.chdir(tmp_path)
    cfg = tiny_config("tiny-clip", batch=32, steps=8, lr=3e-3, warmup=2, log_every=4, checkpoint_every=8,
                      mesh__devices=1)
    cfg.data.synth.knobs = KNOBS
    cfg.data.in_memory_samples = 256
    run(cfg, "rel-run")
    assert (tmp_path / "rel-run" / "checkpoints" / "8").is_dir()
    rc = main(["eval", "--checkpoint", "rel-run", "--task", "zeroshot", "--dataset", "synth:colour",
               "--num-examples", "16", "--results", "rows.csv", "--out", "out"])
    assert rc == 0
    df = load_results(tmp_path / "rows.csv")
    assert set(df["step"]) == {8} and set(df["downstream_dataset"]) == {"synth_colour"}
