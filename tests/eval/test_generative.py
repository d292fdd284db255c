"""MaMMUT generative scoring against a naive per-class loop; CLIP refuses generative tasks (captioning: test_cli)."""

import jax
import numpy as np
import pytest

from tests.eval.conftest import BATCH
from vlscale.errors import UserError
from vlscale.eval import datasets, evaluate_checkpoint, generative
from vlscale.models import checkpoints
from vlscale.eval.encoders import EvalModel
from vlscale.models.mammut import MaMMUT


@pytest.fixture(scope="module")
def mammut(mammut_ckpt):
    ckpt = checkpoints.load(mammut_ckpt)
    return EvalModel.create(ckpt.model_name, ckpt.params, dtype="float32")  # compared with a float32 loop


def naive_scores(em, images, prompts_tokens, context):
    """One full-context captioning pass per class, log-softmax in numpy: sum of log p over the prompt's tokens."""
    out = np.zeros((len(images), len(prompts_tokens)))
    for c, row in enumerate(prompts_tokens):
        full = np.zeros((len(images), context), np.int32)
        full[:, : len(row)] = row
        with jax.default_matmul_precision("highest"):
            logits = np.asarray(em.module.apply({"params": em.params}, images, full, method=MaMMUT.caption_logits),
                                np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        targets = full[:, 1:]
        tok = np.take_along_axis(logp[:, :-1], targets[..., None], axis=-1)[..., 0]
        out[:, c] = (tok * (targets != 0)).sum(-1)
    return out


def test_batched_class_scores_equal_a_naive_per_class_loop(mammut, monkeypatch):
    ds = datasets.open_dataset("synth:colour", "generative", num_examples=8)
    images = np.stack([ds.preprocessed(i, 32) for i in range(ds.num_images)])
    tokens = generative.class_tokens(ds.prompts, mammut.config.context_length)
    used = int((tokens != 0).sum(1).max())
    assert tokens.shape == (12, min(16, -(-used // 8) * 8))  # decoded to the prompts' length, rounded up to 8
    naive = naive_scores(mammut, images, tokens, mammut.config.context_length)
    # Several class chunks (5 classes each, the last one padded) must give the same scores as one.
    monkeypatch.setattr(generative, "LOGITS_BUDGET_BYTES", 5 * 8 * (tokens.shape[1] - 1) * 49408 * 4)
    got = generative.scores(mammut, images, tokens)
    assert np.abs(got - naive).max() < 1e-4
    assert np.ptp(naive) > 0.01  # perturbed weights: the classes really differ
    res = generative.evaluate(mammut, ds, ds.prompts, batch_size=8)
    counts = (tokens[:, 1:] != 0).sum(-1)
    labels = ds.labels
    assert res["metrics"]["generative_acc1"] == pytest.approx(np.mean(naive.argmax(1) == labels))
    assert res["metrics"]["generative_mean_acc1"] == pytest.approx(np.mean((naive / counts).argmax(1) == labels))
    top5 = np.argsort(-naive, axis=1, kind="stable")[:, :5]
    assert res["metrics"]["generative_acc5"] == pytest.approx(np.mean((top5 == labels[:, None]).any(1)))


def test_clip_cannot_do_generative(clip_ckpt):
    with pytest.raises(UserError, match="needs a captioning model"):
        evaluate_checkpoint(clip_ckpt, [("generative", "synth:colour")], batch_size=BATCH)
