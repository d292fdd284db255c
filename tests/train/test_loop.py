"""The training loop on one device: falling loss, exact resume, finished runs, identity checks, cooldowns,
non-finite steps, and the config errors that come before anything compiles."""

import json

import numpy as np
import pytest

from vlscale.errors import UserError
from vlscale.train import loop
from vlscale.runtime import checkpoint

DETERMINISTIC = ("step", "samples_seen", "loss", "lr", "grad_norm", "logit_scale", "contrastive_loss", "caption_loss")


def _deterministic(path):
    return [{k: r[k] for k in DETERMINISTIC if k in r} for r in map(json.loads, open(path))]


@pytest.mark.parametrize("model", ["tiny-clip", "tiny-mammut"])
def test_loss_falls_and_outputs_are_written(tmp_path, make_config, model):
    steps = 30 if model == "tiny-clip" else 20
    cfg = make_config(model, batch=16, steps=steps, lr=3e-3, warmup=3, log_every=5, checkpoint_every=10,
                      mesh__devices=1)
    final = loop.run(cfg, tmp_path)
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in recs] == list(range(5, steps + 1, 5))
    assert recs[-1]["loss"] < recs[0]["loss"] - 0.05, [r["loss"] for r in recs]
    for key in ("lr", "grad_norm", "logit_scale", "step_time_s", "data_wait_s", "samples_per_s"):
        assert key in recs[0]
    if model == "tiny-mammut":
        assert "caption_loss" in recs[0] and "contrastive_loss" in recs[0]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["model"] == model and run["model_type"] == model.split("-")[1]
    assert run["samples_seen"] == 16 * steps and run["lr_scheduler"] == "cosine" and run["pretrain_dataset"] == "synth"
    assert run["gflops_per_sample"] > 0 and run["provenance"]["jax"]
    assert final["step"] == steps and final["samples_seen"] == 16 * steps and len(final["params_sha256"]) == 64
    assert json.loads((tmp_path / "final.json").read_text()) == final
    assert [c.step for c in checkpoint.list_checkpoints(tmp_path)] == [steps - 10, steps]  # keep_checkpoints=2
    assert list((tmp_path / "tb").iterdir())


def test_resume_equals_uninterrupted_and_finished_run_is_a_no_op(tmp_path, make_config, capsys):
    cfg = lambda: make_config("tiny-clip", steps=10, checkpoint_every=3, mesh__devices=1)  # noqa: E731
    whole = loop.run(cfg(), tmp_path / "whole")
    part = loop.run(cfg(), tmp_path / "split", steps=5)
    assert part["finished"] is False and part["step"] == 5
    # Steps 4 and 5 were logged after checkpoint 3... and 5 was saved at the stop, so nothing is repeated.
    resumed = loop.run(cfg(), tmp_path / "split")
    assert resumed == whole
    assert _deterministic(tmp_path / "split" / "metrics.jsonl") == _deterministic(tmp_path / "whole" / "metrics.jsonl")
    before = (tmp_path / "split" / "metrics.jsonl").read_text()
    assert loop.run(cfg(), tmp_path / "split") == whole
    assert "already finished" in capsys.readouterr().out
    assert (tmp_path / "split" / "metrics.jsonl").read_text() == before


def test_metrics_after_the_checkpoint_are_dropped_on_resume(tmp_path, make_config):
    cfg = lambda: make_config("tiny-clip", steps=8, checkpoint_every=4, mesh__devices=1)  # noqa: E731
    whole = loop.run(cfg(), tmp_path / "whole")
    w = tmp_path / "w"
    loop.run(cfg(), w, steps=6)
    # Simulate a kill after step 6 was logged but before its checkpoint: only checkpoint 4 survives.
    import shutil

    for c in checkpoint.list_checkpoints(w):
        if c.step > 4:
            shutil.rmtree(c.path)
    with open(w / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # a torn line
    assert loop.run(cfg(), w) == whole
    assert _deterministic(w / "metrics.jsonl") == _deterministic(tmp_path / "whole" / "metrics.jsonl")


def test_changed_config_is_refused_with_the_fields(tmp_path, make_config):
    loop.run(make_config("tiny-clip", steps=4, mesh__devices=1), tmp_path, steps=2)
    with pytest.raises(UserError, match=r"different config: lr: 0.001 -> 0.002"):
        loop.run(make_config("tiny-clip", steps=4, lr=2e-3, mesh__devices=1), tmp_path)
    # Mesh, logging and checkpoint cadence are not part of the identity.
    out = loop.run(make_config("tiny-clip", steps=4, log_every=2, checkpoint_every=1, mesh__devices=1), tmp_path)
    assert out["step"] == 4


def test_cooldown_from_a_constant_run_checkpoint(tmp_path, make_config):
    const = make_config("tiny-clip", steps=12, schedule="const", checkpoint_every=100,
                        checkpoint_at_samples=[16 * 4, 16 * 8], keep_checkpoints=1, mesh__devices=1)
    loop.run(const, tmp_path / "const")
    assert [(c.step, c.milestone) for c in checkpoint.list_checkpoints(tmp_path / "const")] == \
        [(4, True), (8, True), (12, False)]
    cool = make_config("tiny-clip", steps=12, schedule="const-cooldown", cooldown_steps=4,
                       init_from=str(tmp_path / "const" / "checkpoints" / "8"), mesh__devices=1)
    final = loop.run(cool, tmp_path / "cool")
    recs = [json.loads(line) for line in open(tmp_path / "cool" / "metrics.jsonl")]
    assert [r["step"] for r in recs] == [9, 10, 11, 12]  # no copied history
    np.testing.assert_allclose([r["lr"] for r in recs], [1e-3, 0.75e-3, 0.5e-3, 0.25e-3], rtol=1e-6)
    # It continues the constant run exactly: its first loss equals the constant run's step 9.
    const_recs = {r["step"]: r for r in map(json.loads, open(tmp_path / "const" / "metrics.jsonl"))}
    assert recs[0]["loss"] == const_recs[9]["loss"]
    assert final["samples_seen"] == 16 * 12
    run = json.loads((tmp_path / "cool" / "run.json").read_text())
    assert run["init_from"].endswith("checkpoints/8") and run["lr_scheduler"] == "const-cooldown"
    # A checkpoint past the cooldown's start, or of another model, is refused.
    late = make_config("tiny-clip", steps=12, schedule="const-cooldown", cooldown_steps=6,
                       init_from=str(tmp_path / "const" / "checkpoints" / "8"), mesh__devices=1)
    with pytest.raises(UserError, match="past the start of this run's cooldown"):
        loop.run(late, tmp_path / "late")
    other = make_config("tiny-mammut", steps=12, schedule="const-cooldown", cooldown_steps=4,
                        init_from=str(tmp_path / "const"), mesh__devices=1)
    with pytest.raises(UserError, match="a checkpoint of tiny-clip, not tiny-mammut"):
        loop.run(other, tmp_path / "other")


def test_nonfinite_stops_with_the_last_good_checkpoint_or_is_skipped(tmp_path, make_config):
    bad = make_config("tiny-clip", steps=8, lr=1e30, warmup=1, clip_grad_norm=0.0, checkpoint_every=1,
                      mesh__devices=1)
    with pytest.raises(loop.NonFiniteError, match=r"non-finite loss or gradients at step \d+; the last good"):
        loop.run(bad, tmp_path / "stop")
    skip = make_config("tiny-clip", steps=8, lr=1e30, warmup=1, clip_grad_norm=0.0, skip_nonfinite=True,
                       mesh__devices=1)
    final = loop.run(skip, tmp_path / "skip")
    recs = [json.loads(line) for line in open(tmp_path / "skip" / "metrics.jsonl")]
    assert final["step"] == 8 and recs[-1]["nonfinite_skipped"] >= 1


@pytest.mark.parametrize("fields, message", [
    ({"warmup": 100}, "warm-up must be shorter"),
    ({"global_batch_size": 12}, "not divisible by the batch mesh axes"),
    ({"mesh__fsdp": 3}, "needs 3 devices"),
    ({"schedule": "linear"}, "use one of cosine, const, const-cooldown"),
    ({"grad_accum": 3}, "not divisible by it"),
    ({"schedule": "const-cooldown", "cooldown_steps": 0}, "needs cooldown_steps"),
    ({"model": "ViT-B-33"}, "unknown model 'ViT-B-33'"),
    ({"dtype": "float16"}, "dtype 'float16' is not supported"),
    ({"checkpoint_at_samples": [10**9]}, "outside"),
])
def test_config_errors_before_compiling(tmp_path, make_config, fields, message):
    model = fields.pop("model", "tiny-clip")
    with pytest.raises(UserError, match=message):
        loop.run(make_config(model, steps=8, **fields), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_in_training_zero_shot_check(tmp_path, make_config):
    from vlscale.eval.in_training import evaluator

    cfg = make_config("tiny-clip", steps=8, eval_every=4, log_every=4, mesh__devices=1)
    loop.run(cfg, tmp_path, evaluate=evaluator(cfg))
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    evals = [r for r in recs if "eval/synth_colour/acc1" in r]
    assert [r["step"] for r in evals] == [4, 8]
    assert all(0.0 <= r["eval/synth_shape/acc1"] <= 1.0 for r in evals)
    assert [r["step"] for r in recs if "loss" in r] == [4, 8]
    with pytest.raises(UserError, match="eval_suite='nosuch'"):
        bad = make_config("tiny-clip", steps=8, eval_every=4, eval_suite="nosuch")
        loop.run(bad, tmp_path / "x", evaluate=evaluator(bad))


def test_default_warmup_is_five_percent_of_the_run():
    from vlscale.configs import train as train_config

    c = train_config.get_config("model=tiny-clip,data=synth")
    assert c.warmup == -1
    c.global_batch_size, c.total_samples = 16, 16 * 200
    assert loop.resolve_config(c).warmup == 10
    c.warmup = 3
    assert loop.resolve_config(c).warmup == 3
