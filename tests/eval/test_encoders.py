"""Evaluation precision: "auto" is bf16 on GPU/TPU and float32 on the CPU; bf16 metrics stay close to float32's."""

import json

import jax
import numpy as np
import pytest

from tests.eval.conftest import BATCH
from vlscale.cli import main
from vlscale.errors import UserError
from vlscale.eval import datasets, evaluate_checkpoint, zeroshot
from vlscale.eval.encoders import EvalModel, resolve_dtype
from vlscale.models import checkpoints


@pytest.mark.parametrize("backend, want", [("gpu", "bfloat16"), ("tpu", "bfloat16"), ("cpu", "float32")])
def test_auto_is_bf16_on_accelerators_and_float32_on_cpu(monkeypatch, backend, want):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert resolve_dtype("auto") == want
    # The explicit names do not depend on the backend.
    assert (resolve_dtype("fp32"), resolve_dtype("float32")) == ("float32", "float32")
    assert (resolve_dtype("bf16"), resolve_dtype("bfloat16")) == ("bfloat16", "bfloat16")


def test_unknown_precision_is_a_one_line_error():
    with pytest.raises(UserError, match="precision 'fp16': use auto, float32"):
        resolve_dtype("fp16")


def _cli_precision(ckpt, out, *flags) -> str:
    """The precision `vlscale eval` records in its JSON."""
    rc = main(["eval", "--checkpoint", str(ckpt), "--task", "zeroshot", "--dataset", "synth:colour",
               "--num-examples", "16", "--batch-size", "16", "--out", str(out), *flags])
    assert rc == 0
    return json.loads((out / "zeroshot_synth_colour.json").read_text())["precision"]


def test_default_precision_is_auto_everywhere_and_recorded(tmp_path, clip_ckpt, monkeypatch, capsys):
    ckpt = checkpoints.load(clip_ckpt)
    assert EvalModel.create(ckpt.model_name, ckpt.params).dtype == "float32"  # this CPU backend
    assert _cli_precision(clip_ckpt, tmp_path / "cpu") == "float32"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # what a GPU host reports
    assert EvalModel.create(ckpt.model_name, ckpt.params).dtype == "bfloat16"
    assert _cli_precision(clip_ckpt, tmp_path / "gpu") == "bfloat16"
    assert _cli_precision(clip_ckpt, tmp_path / "fp32", "--precision", "fp32") == "float32"
    capsys.readouterr()


def test_bf16_on_cpu_gives_metrics_close_to_float32(tmp_path, clip_ckpt, monkeypatch):
    """bf16 rounds features to ~3 significant digits: the same predictions but for near-ties, the same metrics within
    a few images. Measured on this tiny random-weight CLIP (128 images, 12 classes; 2026-12-08): acc1 0.086 vs 0.070,
    acc5 0.430 vs 0.422, retrieval recalls identical; image features at cosine >= 0.99998, top-1 predictions equal on
    117 of 128 images."""
    ckpt = checkpoints.load(clip_ckpt)
    tasks = [("zeroshot", "synth:colour", {"num_examples": 128}),
             ("retrieval", "synth:retrieval", {"num_examples": 64})]
    fp32 = evaluate_checkpoint(ckpt, tasks, batch_size=BATCH, dtype="fp32", out_dir=tmp_path / "a", log=lambda m: None)
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    bf16 = evaluate_checkpoint(ckpt, tasks, batch_size=BATCH, out_dir=tmp_path / "b", log=lambda m: None)  # auto
    assert [r["precision"] for r in fp32] == ["float32"] * 2 and [r["precision"] for r in bf16] == ["bfloat16"] * 2
    for a, b in zip(fp32, bf16):
        assert a["metrics"].keys() == b["metrics"].keys()
        for k, v in a["metrics"].items():
            assert b["metrics"][k] == pytest.approx(v, abs=0.04), k  # at most 5 of 128 images flip

    ds = datasets.open_dataset("synth:colour", "zeroshot", num_examples=128)
    em32, em16 = (EvalModel.create(ckpt.model_name, ckpt.params, dtype=d) for d in ("fp32", "bf16"))
    images = np.stack([ds.preprocessed(i, em32.config.image_size) for i in range(ds.num_images)])[:BATCH]
    f32, f16 = (np.asarray(em.fn("encode_image")(em.params, em.replicated(images))) for em in (em32, em16))
    assert f16.dtype == np.float32 and np.min(np.sum(f32 * f16, axis=1)) > 0.999
    assert not np.array_equal(f32, f16)  # bf16 really ran (the metrics of random weights may or may not flip)
    w32 = zeroshot.build_classifier(em32, ds.prompts, BATCH, progress=None)
    w16 = zeroshot.build_classifier(em16, ds.prompts, BATCH, progress=None)
    p32 = zeroshot.classify(em32, ds, w32, BATCH)["pred"]
    p16 = zeroshot.classify(em16, ds, w16, BATCH)["pred"]
    assert np.mean(p32 == p16) >= 0.85


def test_study_and_in_training_evaluation_default_to_auto(tmp_path, clip_ckpt, monkeypatch):
    """The study calls ``evaluate_run`` and the trainer the ``in_training`` callback, neither naming a precision."""
    from tests.eval.conftest import make_workdir, perturbed_params
    from vlscale.configs import train as train_config
    from vlscale.eval import evaluate_run
    from vlscale.eval.in_training import evaluator
    from vlscale.runtime.sharding import make_mesh

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    w = make_workdir(tmp_path / "run", clip_ckpt, "tiny-clip", steps=(10,))
    recs = evaluate_run(w, [("zeroshot", "synth:colour", {"num_examples": 16})], batch_size=BATCH, log=lambda m: None)
    assert [r["precision"] for r in recs] == ["bfloat16"]
    config = train_config.get_config("model=tiny-clip,data=synth")
    config.eval_every, config.eval_suite = 1, "synth-quick"
    metrics = evaluator(config)(perturbed_params("tiny-clip"), step=1, samples=32, mesh=make_mesh(), workdir=tmp_path)
    assert "synth_colour/acc1" in metrics
    doc = json.loads((tmp_path / "eval_in_training" / "step_1" / "zeroshot_synth_colour.json").read_text())
    assert doc["precision"] == "bfloat16"
