"""`vlscale eval` / `vlscale caption` end to end on fake trainer workdirs and converted checkpoints."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.eval.conftest import make_workdir
from vlscale.cli import main
from vlscale.eval import results as results_lib
from vlscale.scaling.results import Selection, load_results, select

SMALL = ["--num-examples", "16", "--batch-size", "16"]


def run(capsys, *argv):
    rc = main(["eval", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cosine_run_final_checkpoint_rows_idempotent_and_fit_ready(tmp_path, clip_ckpt, capsys):
    w = make_workdir(tmp_path / "clip_cos", clip_ckpt, "tiny-clip", schedule="cosine")
    rc, out, _ = run(capsys, "--checkpoint", str(w), "--task", "zeroshot", "--dataset", "synth:colour", *SMALL)
    assert rc == 0 and "synth_colour (zeroshot, step 30): acc1=" in out and "3 new rows" in out
    doc = json.loads((w / "eval" / "step_30" / "zeroshot_synth_colour.json").read_text())
    assert {"dataset", "model", "task", "metrics"} <= set(doc) and doc["dataset"] == "synth_colour"
    assert set(doc["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"} and doc["skipped_images"] == 0
    rc, out, _ = run(capsys, "--checkpoint", str(w), "--task", "zeroshot", "--dataset", "synth:colour", *SMALL)
    assert rc == 0 and "nothing to evaluate" in out
    rc, out, _ = run(capsys, "--checkpoint", str(w), "--task", "retrieval", "--dataset", "synth:retrieval", *SMALL)
    assert rc == 0 and "6 new rows" in out
    df = load_results(w / "results.csv")
    assert len(df) == 9 and set(df["step"]) == {30} and set(df["samples_seen"]) == {960}
    sel = select(df, Selection(downstream_dataset="synth_colour", metric="acc1"))  # what `vlscale fit` selects
    assert len(sel) == 1 and sel["error"].iloc[0] == pytest.approx(1 - doc["metrics"]["acc1"])


def test_const_run_scores_every_checkpoint_past_warmup(tmp_path, clip_ckpt, capsys):
    w = make_workdir(tmp_path / "clip_const", clip_ckpt, "tiny-clip", schedule="const", final=False, warmup=10)
    rc, out, _ = run(capsys, "--checkpoint", str(w), "--task", "zeroshot", "--dataset", "synth:colour", *SMALL)
    assert rc == 0 and "step 20" in out and "step 30" in out and "step 10" not in out
    df = load_results(w / "results.csv")
    assert sorted(set(df["step"])) == [20, 30] and sorted(set(df["samples_seen"])) == [640, 960]
    rc, out, _ = run(capsys, "--checkpoint", str(w), "--task", "zeroshot", "--dataset", "synth:colour",
                     "--all-checkpoints", *SMALL)
    assert "step 10" in out and "step 20" not in out  # only the one without rows
    # A step directory evaluates just that checkpoint.
    rc, out, _ = run(capsys, "--checkpoint", str(w / "checkpoints" / "20"), "--task", "retrieval",
                     "--dataset", "synth:retrieval", *SMALL)
    assert rc == 0 and "step 20" in out and results_lib.has_rows(w / "results.csv", w.name, 20, "synth_retrieval")


def test_converted_checkpoint_rows_only_with_identity(tmp_path, clip_ckpt, capsys):
    rc, out, err = run(capsys, "--checkpoint", str(clip_ckpt), "--task", "zeroshot", "--dataset", "synth:colour",
                       "--out", str(tmp_path / "out"), *SMALL)
    assert rc == 0 and "acc1=" in out and "no rows written" in err
    assert (tmp_path / "out" / "zeroshot_synth_colour.json").is_file()
    table = tmp_path / "table.csv"
    rc, out, _ = run(capsys, "--checkpoint", str(clip_ckpt), "--task", "zeroshot", "--dataset", "synth:colour",
                     "--out", str(tmp_path / "out"), "--results", str(table), "--pretrain-dataset", "laion",
                     "--lr-scheduler", "cosine", "--samples-seen", "1.28e6", *SMALL)
    df = load_results(table)
    assert rc == 0 and len(df) == 3 and set(df["samples_seen"]) == {1.28e6} and set(df["pretrain_dataset"]) == {"laion"}


@pytest.mark.parametrize("case", ["missing_classnames", "mismatched_classnames", "other_model", "generative_on_clip",
                                  "empty_dataset", "bad_spec", "corrupt_results"])
def test_bad_input_is_one_line_error(tmp_path, clip_ckpt, capsys, case):
    args = ["--checkpoint", str(clip_ckpt), "--task", "zeroshot", "--dataset", "synth:colour", *SMALL]
    expect = {"missing_classnames": "does not exist", "mismatched_classnames": "different tasks",
              "other_model": "run.json says tiny-mammut", "generative_on_clip": "needs a captioning model",
              "empty_dataset": "no images", "bad_spec": "dataset spec", "corrupt_results": "not a results table"}[case]
    if case == "missing_classnames":
        args += ["--classnames", str(tmp_path / "nope.txt")]
    elif case == "mismatched_classnames":
        (tmp_path / "shapes.txt").write_text("circle\nsquare\ntriangle\n")
        args += ["--classnames", str(tmp_path / "shapes.txt")]
    elif case == "other_model":
        w = make_workdir(tmp_path / "w", clip_ckpt, "tiny-clip", steps=(10,), run_model="tiny-mammut")
        args[1] = str(w)
    elif case == "generative_on_clip":
        args[3] = "generative"
    elif case == "empty_dataset":
        (tmp_path / "data" / "cat").mkdir(parents=True)
        args[5] = f"folder:{tmp_path / 'data'}"
    elif case == "bad_spec":
        args[5] = "imagenet"
    elif case == "corrupt_results":
        (tmp_path / "r.csv").write_text("a,b\n1,2\n")
        args += ["--results", str(tmp_path / "r.csv"), "--pretrain-dataset", "x", "--lr-scheduler", "cosine",
                 "--samples-seen", "100"]
    rc, out, err = run(capsys, *args)
    assert rc == 2 and expect in err and len(err.strip().splitlines()) == 1, err


def test_corrupt_image_is_skipped_counted_and_written(tmp_path, clip_ckpt, capsys):
    for cls, colour in (("red", (220, 30, 30)), ("blue", (40, 70, 220))):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.full((36, 40, 3), colour, np.uint8)).save(tmp_path / "d" / cls / f"{k}.png")
    (tmp_path / "d" / "red" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    rc, out, _ = run(capsys, "--checkpoint", str(clip_ckpt), "--task", "zeroshot", "--dataset",
                     f"folder:{tmp_path / 'd'}", "--out", str(tmp_path / "out"), "--batch-size", "16")
    assert rc == 0 and "skipped 1 undecodable images" in out
    doc = json.loads((tmp_path / "out" / "zeroshot_d.json").read_text())
    assert doc["skipped_images"] == 1 and doc["num_images"] == 6


def test_mammut_generative_and_caption(tmp_path, mammut_ckpt, capsys):
    rc, out, _ = run(capsys, "--checkpoint", str(mammut_ckpt), "--task", "generative", "--dataset", "synth:colour",
                     "--num-examples", "8", "--batch-size", "8", "--out", str(tmp_path / "out"))
    assert rc == 0 and "generative_acc1=" in out and "generative_mean_acc1=" in out and "generative_acc5=" in out
    paths = []
    for k in range(2):
        paths.append(str(tmp_path / f"{k}.png"))
        Image.fromarray(np.full((40, 40, 3), 60 * k, np.uint8)).save(paths[-1])
    rc = main(["caption", "--checkpoint", str(mammut_ckpt), "--num-beams", "2", "--batch-size", "2", *paths])
    out, _ = capsys.readouterr()
    lines = out.strip().splitlines()
    assert rc == 0 and len(lines) == 2 and lines[0].startswith(paths[0] + "\t")
    rc = main(["caption", "--checkpoint", str(mammut_ckpt), str(tmp_path / "missing.png")])
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_bf16_mode_runs_and_is_recorded(tmp_path, clip_ckpt, capsys):
    from vlscale.eval import datasets, zeroshot
    from vlscale.models import checkpoints
    from vlscale.eval.encoders import EvalModel

    rc, out, _ = run(capsys, "--checkpoint", str(clip_ckpt), "--task", "zeroshot", "--dataset", "synth:colour",
                     "--precision", "bf16", "--out", str(tmp_path), *SMALL)
    assert rc == 0 and json.loads((tmp_path / "zeroshot_synth_colour.json").read_text())["precision"] == "bfloat16"
    ckpt = checkpoints.load(clip_ckpt)
    prompts = datasets.open_dataset("synth:colour", "zeroshot", num_examples=16).prompts
    w32 = zeroshot.build_classifier(EvalModel.create(ckpt.model_name, ckpt.params, dtype="fp32"), prompts, 16,
                                    progress=None)
    w16 = zeroshot.build_classifier(EvalModel.create(ckpt.model_name, ckpt.params, dtype="bf16"), prompts, 16,
                                    progress=None)
    assert w16.dtype == np.float32 and 0 < np.abs(w16 - w32).max() < 0.05  # bf16 rounding, nothing worse
