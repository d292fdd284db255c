"""Parity with open_clip: a random-weight open_clip CLIP, converted, gives the classifier open_clip's encoders give
(within 1e-5) and exactly the metrics CLIP_benchmark's formulas give on open_clip's features."""

import numpy as np
import open_clip
import pytest
import torch

from tests.eval import reference
from tests.eval.conftest import BATCH
from tests.models.test_clip_parity import open_clip_model, perturb_
from vlscale.eval import datasets, evaluate_checkpoint, zeroshot
from vlscale.eval.encoders import EvalModel
from vlscale.models import convert, saved_params
from vlscale.models.config import get_config

pytestmark = pytest.mark.parity
MODEL = "tiny-clip"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cfg = get_config(MODEL)
    torch.manual_seed(0)
    tm = perturb_(open_clip_model(cfg).eval(), seed=3)
    state = {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()}
    path = tmp_path_factory.mktemp("parity") / "ckpt"
    saved_params.save_params(path, convert.torch_to_flax(state, cfg), MODEL)
    return tm, path


def _torch_features(fn, batch):
    with torch.no_grad():
        return fn(batch).numpy().astype(np.float64)


def test_classifier_and_zeroshot_metrics_equal_open_clips(models):
    tm, path = models
    ds = datasets.open_dataset("synth:colour", "zeroshot", num_examples=48)
    prompts = ds.prompts
    # open_clip: its tokenizer and encoders, CLIP_benchmark's classifier and metrics in numpy.
    tokens = open_clip.tokenize(prompts.texts(), context_length=get_config(MODEL).context_length)
    text = _torch_features(tm.encode_text, tokens).reshape(len(prompts.classnames), len(prompts.templates), -1)
    ref_classifier = reference.zeroshot_classifier(text)
    pixels = np.stack([ds.preprocessed(i, 32) for i in range(ds.num_images)])
    img = _torch_features(tm.encode_image, torch.from_numpy(pixels.transpose(0, 3, 1, 2)))
    img /= np.linalg.norm(img, axis=-1, keepdims=True)
    ref_metrics = reference.classification(100.0 * img @ ref_classifier, ds.labels)

    from vlscale.models import checkpoints

    ckpt = checkpoints.load(path)
    em = EvalModel.create(ckpt.model_name, ckpt.params, dtype="float32")  # parity is float32 on any backend
    ours = zeroshot.build_classifier(em, prompts, BATCH, progress=None)
    assert np.abs(ours - ref_classifier).max() < 1e-5
    rec = evaluate_checkpoint(ckpt, [("zeroshot", "synth:colour", {"num_examples": 48})], batch_size=BATCH,
                              out_dir=path.parent / "out", dtype="float32", log=lambda m: None)[0]
    assert rec["precision"] == "float32"
    assert rec["metrics"] == pytest.approx(ref_metrics, abs=1e-12)
    assert 0 < ref_metrics["acc5"] < 1  # a non-trivial check: some hits, some misses


def test_retrieval_recalls_equal_open_clips(models):
    tm, path = models
    ds = datasets.open_dataset("synth:retrieval", "retrieval", num_examples=24)
    texts = [c for caps in ds.captions for c in caps]
    text_image = np.repeat(np.arange(ds.num_images), [len(c) for c in ds.captions])
    txt = _torch_features(tm.encode_text, open_clip.tokenize(texts, context_length=get_config(MODEL).context_length))
    pixels = np.stack([ds.preprocessed(i, 32) for i in range(ds.num_images)])
    img = _torch_features(tm.encode_image, torch.from_numpy(pixels.transpose(0, 3, 1, 2)))
    txt /= np.linalg.norm(txt, axis=-1, keepdims=True)
    img /= np.linalg.norm(img, axis=-1, keepdims=True)
    ref = reference.retrieval(img, txt, text_image)
    rec = evaluate_checkpoint(path, [("retrieval", "synth:retrieval", {"num_examples": 24})], batch_size=BATCH,
                              out_dir=path.parent / "out", dtype="float32", log=lambda m: None)[0]
    assert rec["metrics"] == pytest.approx(ref, abs=1e-12)
    assert set(rec["metrics"]) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}


def test_shipped_prompt_lists_equal_open_clips():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    from vlscale.eval import prompts

    assert prompts.imagenet_classnames() == list(IMAGENET_CLASSNAMES)
    assert prompts.openai_templates() == [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]
