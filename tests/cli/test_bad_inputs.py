"""Every command over bad inputs: exit 2, a last stderr line ``vlscale CMD: error: ...`` naming the input, no
traceback, nothing written to --out.

One table for all commands (``CASES``). Adding a command adds rows here: ``test_every_command_has_rows`` fails
for a registered command without any. A row is ``Case(id, argv, names, out=..., env=..., absent=...)``; argv items
and the other strings may use the placeholders of ``Files`` (``{tmp}``, ``{text}``, ``{ckpt}``, ...), see
``files`` below. ``out`` is the path the command was told to write (default ``{tmp}/out``): it must not appear
(or, if it existed, must be unchanged), and no temporary sibling may be left. Everything runs in-process
(``vlscale.cli.main``), so the whole table costs a few seconds.

The format: ``prog: error: message`` is argparse's own, so a bad flag value and a bad file read the same; the
regular expression ``ERROR_LINE`` is the contract.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np
import pytest

from vlscale.cli import build_parser, main

ERROR_LINE = re.compile(r"^vlscale( [a-z][a-z0-9-]*)*: error: \S")
OUT = "{tmp}/out"


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    names: str  # text the error line must contain: the flag, value or file at fault
    out: str | None = OUT  # what the command was told to write; must not be created or changed
    env: dict = field(default_factory=dict)
    absent: str | None = None  # a file that must not exist afterwards (e.g. what a malicious pickle would create)
    xfail: str | None = None  # a known gap, reported to the command's owner; strict: remove it once fixed


def C(id, *argv, names, **kw):  # noqa: N802 - reads like a table row
    return Case(id, tuple(argv), names, **kw)


TRAIN_CFG = "configs/train.py:model=tiny-clip,data=synth"
PAPER = ("--benchmark", "imagenet1k", "--pretrain-dataset", "datacomp_1b", "--lr-scheduler", "cosine")

CASES = [
    # --- fit / compare (the table itself is validated in tests/scaling; here: paths, flags, outputs)
    C("fit-missing-table", "fit", "{tmp}/missing.csv", "--out", OUT, names="missing.csv"),
    C("fit-text-table", "fit", "{text}", "--out", OUT, names="notes.txt"),
    C("fit-empty-table", "fit", "{empty_png}", "--out", OUT, names="empty.png"),
    C("fit-binary-table", "fit", "{random_safetensors}", "--out", OUT, names="random.safetensors"),
    C("fit-env-missing-table", "fit", *PAPER, "--out", OUT, names="nope.csv", env={"VLSCALE_RESULTS": "{tmp}/nope.csv"}),
    C("fit-env-folder-without-table", "fit", *PAPER, "--out", OUT, names="laion_scaling_results.csv",
      env={"VLSCALE_RESULTS": "{tmp}"}),
    C("fit-seed-negative", "fit", "--seed", "-1", "--out", OUT, names="--seed"),
    C("fit-seed-not-int", "fit", "--seed", "one", "--out", OUT, names="--seed"),
    C("fit-predict-empty-item", "fit", "--predict", "1e12,,2e12", "--out", OUT, names="1e12,,2e12"),
    C("fit-predict-not-number", "fit", "--predict", "1e12,lots", "--out", OUT, names="lots"),
    C("fit-models-empty-item", "fit", *PAPER, "--models", "ViT-B-32,,ViT-L-14", "--out", OUT, names="ViT-B-32,,"),
    C("fit-bootstrap-huge", "fit", *PAPER, "--model-types", "mammut", "--bootstrap", "1e8", "--out", OUT,
      names="--bootstrap 100000000"),
    C("fit-bootstrap-negative", "fit", "--bootstrap", "-5", "--out", OUT, names="--bootstrap"),
    C("fit-out-is-a-file", "fit", *PAPER, "--out", "{afile}", names="afile", out="{afile}"),
    C("fit-out-under-a-file", "fit", *PAPER, "--out", "{afile}/sub", names="afile", out="{afile}"),
    C("fit-out-unwritable", "fit", *PAPER, "--out", "/proc/vlscale-out", names="/proc/vlscale-out",
      out="/proc/vlscale-out"),
    C("fit-unknown-form", "fit", *PAPER, "--form", "cubic", "--out", OUT, names="cubic"),
    C("fit-max-compute-unknown-group", "fit", *PAPER, "--model-types", "clip,mammut", "--fit-max-compute", "CLIP:1e11",
      "--out", OUT, names="CLIP"),
    C("fit-unknown-frontier-scope", "fit", *PAPER, "--frontier-scope", "some", "--out", OUT, names="some"),
    C("compare-missing-table", "compare", "{tmp}/missing.csv", "--out", OUT, names="missing.csv"),
    C("compare-env-missing-table", "compare", "--out", OUT, names="nope.csv",
      env={"VLSCALE_RESULTS": "{tmp}/nope.csv"}),
    C("compare-out-is-a-file", "compare", "--out", "{afile}", names="afile", out="{afile}"),
    C("compare-model-types-empty-item", "compare", "--model-types", "clip,,mammut", "--out", OUT,
      names="clip,,mammut"),
    C("compare-bootstrap-huge", "compare", "--bootstrap", "100000000", "--out", OUT, names="--bootstrap 100000000"),
    C("compare-level-out-of-range", "compare", "--level", "1.5", "--bootstrap", "0", "--no-loo", "--out", OUT,
      names="1.5"),
    C("compare-unknown-benchmark", "compare", "--benchmark", "nosuchbench", "--out", OUT, names="nosuchbench"),
    C("compare-same-group-twice", "compare", "--model-types", "clip,clip", "--bootstrap", "0", "--out", OUT,
      names="clip twice"),
    C("fit-predict-negative", "fit", "--predict", "-5", "--out", OUT, names="--predict"),
    C("compare-min-difference-nan", "compare", "--min-difference", "nan", "--out", OUT, names="--min-difference"),
    C("compare-benchmark-empty", "compare", "--benchmark", "", "--out", OUT, names="--benchmark ''"),
    C("fit-metric-blank", "fit", "--benchmark", "imagenet1k", "--metric", " ", "--out", OUT, names="--metric ' '"),
    # --- data laion-results
    C("laion-results-one-local-copy", "data", "laion-results", "--notebook", "{text}", "--out", OUT,
      names="--model-profile"),
    C("laion-results-missing-notebook", "data", "laion-results", "--notebook", "{tmp}/nb.ipynb", "--model-profile",
      "{csv}", "--out", OUT, names="nb.ipynb"),
    C("laion-results-binary-notebook", "data", "laion-results", "--notebook", "{random_safetensors}",
      "--model-profile", "{csv}", "--out", OUT, names="--notebook"),
    C("laion-results-out-is-a-file", "data", "laion-results", "--notebook", "{text}", "--model-profile", "{csv}",
      "--out", "{afile}", names="afile", out="{afile}"),
    # --- models
    C("models-unknown-flag", "models", "--bogus", names="--bogus", out=None),
    # --- convert
    C("convert-missing-file", "convert", "--from-open-clip", "{tmp}/none.pt", "--model", "tiny-clip", "--out", OUT,
      names="none.pt"),
    C("convert-text-as-pt", "convert", "--from-open-clip", "{text_pt}", "--model", "tiny-clip", "--out", OUT,
      names="text.pt"),
    C("convert-csv", "convert", "--from-open-clip", "{csv}", "--model", "tiny-clip", "--out", OUT, names="table.csv"),
    C("convert-truncated-pt", "convert", "--from-open-clip", "{truncated_pt}", "--model", "tiny-clip", "--out", OUT,
      names="truncated.pt"),
    C("convert-random-safetensors", "convert", "--from-open-clip", "{random_safetensors}", "--model", "tiny-clip",
      "--out", OUT, names="random.safetensors"),
    C("convert-truncated-npz", "convert", "--from-open-clip", "{truncated_npz}", "--model", "tiny-clip",
      "--out", OUT, names="truncated.npz"),
    C("convert-pickle-runs-code", "convert", "--from-open-clip", "{evil_pt}", "--model", "tiny-clip", "--out", OUT,
      names="--trust-pickle", absent="{tmp}/PWNED"),
    C("convert-pickle-not-a-dict", "convert", "--from-open-clip", "{list_pt}", "--model", "tiny-clip", "--out", OUT,
      names="list.pt"),
    C("convert-folder", "convert", "--from-open-clip", "{bad_dir}", "--model", "tiny-clip", "--out", OUT,
      names="bad_dir"),
    C("convert-unknown-model", "convert", "--from-open-clip", "{random_safetensors}", "--model", "ViT-Q-99",
      "--out", OUT, names="ViT-Q-99"),
    C("convert-no-model", "convert", "--from-open-clip", "{random_safetensors}", "--out", OUT, names="--model"),
    C("convert-out-is-a-file", "convert", "--from-open-clip", "{text_pt}", "--model", "tiny-clip", "--out",
      "{afile}", names="afile", out="{afile}"),
    C("convert-out-under-a-file", "convert", "--from-open-clip", "{text_pt}", "--model", "tiny-clip", "--out",
      "{afile}/ckpt", names="afile", out="{afile}"),
    C("convert-export-not-a-checkpoint", "convert", "--to-open-clip", "{tmp}", "--out", "{tmp}/out.safetensors",
      names="not a vlscale checkpoint", out="{tmp}/out.safetensors"),
    C("convert-export-bad-suffix", "convert", "--to-open-clip", "{ckpt}", "--out", "{tmp}/out.txt", names="out.txt",
      out="{tmp}/out.txt"),
    C("convert-export-out-is-a-folder", "convert", "--to-open-clip", "{ckpt}", "--out", "{tmp}", names="{tmp}",
      out=None),
    # --- embed
    C("embed-not-an-image", "embed", "--checkpoint", "{ckpt}", "--images", "{fake_png}", "--texts", "a",
      "--out", "{tmp}/e.npz", names="fake.png", out="{tmp}/e.npz"),
    C("embed-empty-image", "embed", "--checkpoint", "{ckpt}", "--images", "{empty_png}", "--texts", "a",
      "--out", "{tmp}/e.npz", names="empty.png", out="{tmp}/e.npz"),
    C("embed-truncated-image", "embed", "--checkpoint", "{ckpt}", "--images", "{truncated_png}", "--texts", "a",
      "--out", "{tmp}/e.npz", names="truncated.png", out="{tmp}/e.npz"),
    C("embed-missing-image", "embed", "--checkpoint", "{ckpt}", "--images", "{tmp}/none.png", "--texts", "a",
      names="none.png", out=None),
    C("embed-folder-as-image", "embed", "--checkpoint", "{ckpt}", "--images", "{bad_dir}", "--texts", "a",
      "--out", "{tmp}/e.npz", names="bad_dir", out="{tmp}/e.npz"),
    C("embed-batch-size-zero", "embed", "--checkpoint", "{ckpt}", "--texts", "a", "--batch-size", "0", "--out",
      "{tmp}/e.npz", names="--batch-size", out="{tmp}/e.npz"),
    C("embed-batch-size-negative", "embed", "--checkpoint", "{ckpt}", "--texts", "a", "--batch-size", "-2",
      "--out", "{tmp}/e.npz", names="--batch-size", out="{tmp}/e.npz"),
    C("embed-out-is-a-folder", "embed", "--checkpoint", "{ckpt}", "--texts", "a", "--out", "{tmp}", names="{tmp}",
      out=None),
    C("embed-out-bad-suffix", "embed", "--checkpoint", "{ckpt}", "--texts", "a", "--out", "{tmp}/e.txt",
      names="e.txt", out="{tmp}/e.txt"),
    C("embed-out-under-a-file", "embed", "--checkpoint", "{ckpt}", "--texts", "a", "--out", "{afile}/e.npz",
      names="afile", out="{afile}"),
    C("embed-not-a-checkpoint", "embed", "--checkpoint", "{tmp}", "--texts", "a", "--out", "{tmp}/e.npz",
      names="not a vlscale checkpoint", out="{tmp}/e.npz"),
    C("embed-image-dir-missing", "embed", "--checkpoint", "{ckpt}", "--image-dir", "{tmp}/nodir", "--texts", "a",
      names="nodir", out=None),
    C("embed-image-dir-all-bad", "embed", "--checkpoint", "{ckpt}", "--image-dir", "{bad_dir}", "--texts", "a",
      "--out", "{tmp}/e.npz", names="empty.jpg", out="{tmp}/e.npz"),
    C("embed-texts-file-binary", "embed", "--checkpoint", "{ckpt}", "--texts-file", "{truncated_pt}", "--out",
      "{tmp}/e.npz", names="truncated.pt", out="{tmp}/e.npz"),
    C("embed-texts-file-missing", "embed", "--checkpoint", "{ckpt}", "--texts-file", "{tmp}/none.txt", "--out",
      "{tmp}/e.npz", names="none.txt", out="{tmp}/e.npz"),
    # --- data synth
    C("synth-out-is-a-file", "data", "synth", "--out", "{afile}", "--shards", "1", "--samples-per-shard", "2",
      names="afile", out="{afile}"),
    C("synth-out-under-a-file", "data", "synth", "--out", "{afile}/d", "--shards", "1", names="afile",
      out="{afile}"),
    C("synth-image-size-zero", "data", "synth", "--out", OUT, "--image-size", "0", names="--image-size"),
    C("synth-image-size-negative", "data", "synth", "--out", OUT, "--image-size", "-8", names="--image-size"),
    C("synth-retrieval-zero-alone", "data", "synth", "--out", OUT, "--shards", "1", "--samples-per-shard", "2",
      "--retrieval", "0", names="--retrieval 0"),
    C("synth-retrieval-without-tasks", "data", "synth", "--out", OUT, "--shards", "1", "--samples-per-shard", "2",
      "--eval-per-task", "0", "--retrieval", "5", names="--eval-per-task 0"),
    C("synth-eval-per-task-negative", "data", "synth", "--out", OUT, "--eval-per-task", "-1",
      names="--eval-per-task"),
    C("synth-shards-zero", "data", "synth", "--out", OUT, "--shards", "0", names="--shards"),
    C("synth-quality-too-high", "data", "synth", "--out", OUT, "--quality", "101", names="--quality"),
    C("synth-bad-knob", "data", "synth", "--out", OUT, "--set", "colours=red", names="colours=red"),
    C("synth-image-size-huge", "data", "synth", "--out", OUT, "--image-size", "100000", names="--image-size 100000"),
    C("synth-shards-huge", "data", "synth", "--out", OUT, "--shards", "1e12", names="--shards 1000000000000"),
    C("synth-samples-beyond-the-disk", "data", "synth", "--out", OUT, "--shards", "1000", "--samples-per-shard",
      "1e9", names="--samples-per-shard 1000000000"),
    C("synth-probability-above-one", "data", "synth", "--out", OUT, "--set", "distractor_prob=2",
      names="distractor_prob must be a probability"),
    C("synth-probability-nan", "data", "synth", "--out", OUT, "--set", "p_mention_size=NaN",
      names="p_mention_size must be a probability"),
    # --- train (a workdir is its output: a bad config must not create it)
    C("train-missing-config", "train", "--config", "{tmp}/nosuch.py", "--workdir", "{tmp}/w", names="nosuch.py",
      out="{tmp}/w"),
    C("train-unknown-model", "train", "--config", f"{TRAIN_CFG}".replace("tiny-clip", "nosuch"), "--workdir",
      "{tmp}/w", names="nosuch", out="{tmp}/w"),
    C("train-workdir-is-a-file", "train", "--config", TRAIN_CFG, "--workdir", "{afile}", names="afile",
      out="{afile}"),
    C("train-workdir-under-a-file", "train", "--config", TRAIN_CFG, "--workdir", "{afile}/w", names="afile",
      out="{afile}"),
    C("train-steps-negative", "train", "--config", TRAIN_CFG, "--workdir", "{tmp}/w", "--steps", "-1",
      names="--steps", out="{tmp}/w"),
    C("train-field-not-an-int", "train", "--config", TRAIN_CFG, "--workdir", "{tmp}/w",
      "--config.total_samples=abc", names="total_samples", out="{tmp}/w"),
    C("train-unknown-field", "train", "--config", TRAIN_CFG, "--workdir", "{tmp}/w", "--config.nosuch=1",
      names="nosuch", out="{tmp}/w"),
    C("train-batch-size-zero", "train", "--config", TRAIN_CFG, "--workdir", "{tmp}/w",
      "--config.global_batch_size=0", names="global_batch_size", out="{tmp}/w"),
    C("train-onto-another-models-workdir", "train", "--config", TRAIN_CFG, "--workdir", "{mammut_workdir}",
      "--config.allow_config_change=true", names="holds a run of model tiny-mammut", out="{mammut_workdir}"),
    C("train-total-samples-beyond-a-lifetime", "train", "--config", TRAIN_CFG, "--workdir", "{tmp}/w",
      "--config.total_samples=1e30", names="--config.total_samples", out="{tmp}/w"),
    # --- eval
    C("eval-missing-checkpoint", "eval", "--checkpoint", "{tmp}/nockpt", "--task", "zeroshot", "--dataset",
      "synth:colour", names="nockpt", out=None),
    C("eval-not-a-checkpoint", "eval", "--checkpoint", "{tmp}", "--task", "zeroshot", "--dataset", "synth:colour",
      names="not a vlscale checkpoint", out=None),
    C("eval-unknown-dataset", "eval", "--checkpoint", "{ckpt}", "--task", "zeroshot", "--dataset", "nosuch:x",
      "--out", OUT, names="nosuch"),
    C("eval-batch-size-zero", "eval", "--checkpoint", "{ckpt}", "--task", "zeroshot", "--dataset", "synth:colour",
      "--batch-size", "0", "--out", OUT, names="--batch-size"),
    C("eval-out-is-a-file", "eval", "--checkpoint", "{ckpt}", "--task", "zeroshot", "--dataset", "synth:colour",
      "--out", "{afile}", names="afile", out="{afile}"),
    C("eval-results-is-a-folder", "eval", "--checkpoint", "{ckpt}", "--task", "zeroshot", "--dataset",
      "synth:colour", "--results", "{bad_dir}", names="bad_dir", out="{bad_dir}"),
    C("eval-unknown-suite", "eval", "--checkpoint", "{ckpt}", "--suite", "nosuchsuite", names="nosuchsuite", out=None),
    C("eval-missing-classnames", "eval", "--checkpoint", "{ckpt}", "--task", "zeroshot", "--dataset",
      "synth:colour", "--classnames", "{tmp}/none.txt", "--out", OUT, names="none.txt"),
    C("eval-templates-without-placeholder", "eval", "--checkpoint", "{ckpt}", "--task", "zeroshot", "--dataset",
      "synth:colour", "--templates", "{text}", "--num-examples", "8", "--batch-size", "8", "--out", OUT,
      names="placeholder"),
    C("eval-classnames-of-another-task", "eval", "--checkpoint", "{ckpt}", "--task", "zeroshot", "--dataset",
      "synth:colour", "--classnames", "{text}", "--num-examples", "8", "--batch-size", "8", "--out", OUT,
      names="different tasks"),
    C("eval-generative-on-clip", "eval", "--checkpoint", "{ckpt}", "--task", "generative", "--dataset",
      "synth:colour", "--out", OUT, names="tiny-clip"),
    C("eval-results-not-csv", "eval", "--checkpoint", "{ckpt}", "--task", "zeroshot", "--dataset", "synth:colour",
      "--results", "{text}", names="notes.txt", out="{text}"),
    C("eval-no-task", "eval", "--checkpoint", "{ckpt}", "--out", OUT, names="--task"),
    C("eval-num-examples-zero", "eval", "--checkpoint", "{ckpt}", "--task", "zeroshot", "--dataset", "synth:colour",
      "--num-examples", "0", "--out", OUT, names="--num-examples"),
    C("eval-samples-seen-not-a-number", "eval", "--checkpoint", "{ckpt}", "--task", "zeroshot", "--dataset",
      "synth:colour", "--samples-seen", "lots", "--out", OUT, names="--samples-seen"),
    C("eval-batch-size-not-divisible", "eval", "--checkpoint", "{ckpt}", "--task", "zeroshot", "--dataset",
      "synth:colour", "--batch-size", "12", "--out", OUT, names="--batch-size 12"),
    # --- caption
    C("caption-missing-checkpoint", "caption", "--checkpoint", "{tmp}/nockpt", "{fake_png}", names="nockpt",
      out=None),
    C("caption-not-a-checkpoint", "caption", "--checkpoint", "{tmp}", "{fake_png}",
      names="not a vlscale checkpoint", out=None),
    C("caption-beams-zero", "caption", "--checkpoint", "{ckpt}", "{fake_png}", "--num-beams", "0",
      names="--num-beams", out=None),
    C("caption-batch-size-zero", "caption", "--checkpoint", "{ckpt}", "{fake_png}", "--batch-size", "0",
      names="--batch-size", out=None),
    C("caption-missing-image", "caption", "--checkpoint", "{ckpt}", "{tmp}/none.png", names="none.png", out=None),
    C("caption-clip-checkpoint", "caption", "--checkpoint", "{ckpt}", "{good_png}",
      names="caption needs a captioning model (MaMMUT); tiny-clip is a clip model", out=None),
    C("caption-not-an-image", "caption", "--checkpoint", "{mammut}", "{good_png}", "{fake_png}", names="fake.png",
      out=None),
    C("caption-beams-huge", "caption", "--checkpoint", "{mammut}", "{good_png}", "--num-beams", "100000",
      names="--num-beams 100000", out=None),
    C("caption-seq-len-huge", "caption", "--checkpoint", "{mammut}", "{good_png}", "--seq-len", "500",
      names="--seq-len 500", out=None),
    # --- study (DIR is shared by its runs: a bad config must not create or change it)
    C("study-plan-missing-config", "study", "plan", "--config", "{tmp}/nosuch.py", names="nosuch.py", out=None),
    C("study-plan-unknown-config", "study", "plan", "--config", "nosuchstudy", names="nosuchstudy", out=None),
    C("study-run-missing-config", "study", "run", "--config", "{tmp}/nosuch.py", "--dir", "{tmp}/s",
      names="nosuch.py", out="{tmp}/s"),
    C("study-run-dir-is-a-file", "study", "run", "--dir", "{afile}", names="afile", out="{afile}"),
    C("study-run-dir-under-a-file", "study", "run", "--dir", "{afile}/s", names="afile", out="{afile}"),
    C("study-status-not-a-study", "study", "status", "{tmp}/nodir", names="nodir", out="{tmp}/nodir"),
    C("study-collect-not-a-study", "study", "collect", "{tmp}/nodir", names="nodir", out="{tmp}/nodir"),
    C("study-launch-unknown-config", "study", "launch", "--config", "nosuchstudy", "--dir", "{tmp}/s",
      names="nosuchstudy", out="{tmp}/s"),
    C("study-launch-nodes-zero", "study", "launch", "--dir", "{tmp}/s", "--backend", "slurm", "--nodes", "0",
      names="--nodes", out="{tmp}/s"),
    C("study-plan-config-not-python", "study", "plan", "--config", "{text}", names="notes.txt", out=None),
    C("study-launch-tpu-without-name", "study", "launch", "--dir", "{tmp}/s", "--backend", "tpu-vm",
      names="--tpu-name", out="{tmp}/s"),
    C("study-launch-print-submit", "study", "launch", "--dir", "{tmp}/s", "--submit", names="--submit",
      out="{tmp}/s"),
    C("study-launch-time-malformed", "study", "launch", "--dir", "{tmp}/s", "--backend", "slurm", "--time", "abc",
      names="--time", out="{tmp}/s"),
    C("study-launch-gpus-negative", "study", "launch", "--dir", "{tmp}/s", "--backend", "slurm", "--gpus-per-node",
      "-1", names="--gpus-per-node", out="{tmp}/s"),
]


@dataclass
class Files:
    """Paths the rows refer to as {name}."""
    values: dict

    def fmt(self, s):
        return s.format(**self.values) if isinstance(s, str) else s


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import torch
    from PIL import Image

    from vlscale.models import convert, saved_params

    root = tmp_path_factory.mktemp("bad")
    v = {"tmp": str(root)}

    def put(name, data: bytes):
        (root / name).write_bytes(data)
        v[name.replace(".", "_")] = str(root / name)
        return root / name

    put("notes.txt", b"just some notes\nnot a table\n")
    v["text"] = v.pop("notes_txt")
    put("text.pt", b"hello, I am text\n")
    put("table.csv", b"a,b\n1,2\n")
    v["csv"] = v.pop("table_csv")
    put("afile", b"precious")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'PWNED'}",))

    torch.save({"state_dict": {"w": torch.zeros(2)}, "hook": Evil()}, root / "evil.pt")
    v["evil_pt"] = str(root / "evil.pt")
    torch.save([torch.zeros(2)], root / "list.pt")
    v["list_pt"] = str(root / "list.pt")
    good_pt = (root / "evil.pt").read_bytes()
    put("truncated.pt", good_pt[: len(good_pt) // 2])
    put("random.safetensors", np.random.default_rng(0).bytes(4096))
    np.savez(root / "whole.npz", a=np.zeros(100))
    whole = (root / "whole.npz").read_bytes()
    put("truncated.npz", whole[: len(whole) // 2])

    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), 120, np.uint8)).save(buf, format="PNG")
    put("good.png", buf.getvalue())
    put("fake.png", b"this is not a picture")
    put("empty.png", b"")
    put("truncated.png", buf.getvalue()[:60])
    bad_dir = root / "bad_dir"
    bad_dir.mkdir()
    (bad_dir / "fake.png").write_bytes(b"nope")
    (bad_dir / "empty.jpg").write_bytes(b"")
    v["bad_dir"] = str(bad_dir)

    rng = np.random.default_rng(0)
    state = {k: rng.normal(0, 0.02, s).astype(np.float32)
             for k, s in convert.expected_state_dict_shapes("tiny-clip").items()}
    saved_params.save_params(root / "ckpt", convert.torch_to_flax(state, "tiny-clip"), "tiny-clip")
    v["ckpt"] = str(root / "ckpt")
    from vlscale.models import registry

    saved_params.save_params(root / "mammut", registry.init_params(registry.build_model("tiny-mammut"), 0),
                             "tiny-mammut")
    v["mammut"] = str(root / "mammut")
    (root / "mammut_workdir").mkdir()
    (root / "mammut_workdir" / "run.json").write_text('{"model": "tiny-mammut", "config": {"model": "tiny-mammut"}}')
    v["mammut_workdir"] = str(root / "mammut_workdir")
    return Files(v)


def _snapshot(path: str):
    if not os.path.lexists(path):
        return None
    if os.path.isdir(path):
        return sorted(os.listdir(path))
    with open(path, "rb") as f:
        return f.read()


def _leftovers(path: str) -> list[str]:
    """Temporary siblings of ``path`` left behind (``.NAME.*.tmp``)."""
    parent, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(parent):
        return []
    return [n for n in os.listdir(parent) if n.startswith(f".{name}.") and n.endswith(".tmp")]


def _params(cases):
    return [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
            for c in cases]


@pytest.mark.parametrize("case", _params(CASES))
def test_bad_input_is_a_one_line_error(case, files, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("VLSCALE_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("VLSCALE_RESULTS", raising=False)
    for k, val in case.env.items():
        monkeypatch.setenv(k, files.fmt(val))
    out = files.fmt(case.out)
    before = _snapshot(out) if out else None
    capsys.readouterr()
    rc = main([files.fmt(a) for a in case.argv])
    captured = capsys.readouterr()
    err_lines = [line for line in captured.err.splitlines() if line.strip()]
    assert rc == 2, f"exit {rc}; stderr:\n{captured.err}"
    assert err_lines and ERROR_LINE.match(err_lines[-1]), captured.err
    assert files.fmt(case.names) in err_lines[-1], err_lines[-1]
    assert "Traceback" not in captured.err + captured.out
    if out:
        assert _snapshot(out) == before, f"{out} was written"
        assert _leftovers(out) == []
    if case.absent:
        assert not os.path.exists(files.fmt(case.absent)), "the checkpoint ran code"
    assert not (tmp_path / "logs").exists(), "an internal error was logged (should be a user error)"


def registered_commands() -> set[str]:
    """Every runnable command of `vlscale`, group members as 'data synth'."""
    import argparse

    def subcommands(parser, prefix=""):
        out = set()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    inner = subcommands(sub, f"{prefix}{name} ")
                    out |= inner or {f"{prefix}{name}"}
        return out

    return subcommands(build_parser())


def _command_of(case: Case, commands: set[str]) -> str:
    two = " ".join(case.argv[:2])
    return two if two in commands else case.argv[0]


def test_every_command_has_rows():
    commands = registered_commands()
    covered = {_command_of(c, commands) for c in CASES}
    missing = commands - covered
    assert not missing, f"add bad-input rows to tests/cli/test_bad_inputs.py for: {', '.join(sorted(missing))}"
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("command", sorted(registered_commands()))
def test_unknown_flag_fails_the_same_way_everywhere(command, capsys):
    """Every registered command, including ones added later, rejects a misspelt flag in the common format."""
    rc = main([*command.split(), "--no-such-flag"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    # argparse names missing required arguments before unknown ones
    assert rc == 2 and ERROR_LINE.match(err[-1]), err
    assert "--no-such-flag" in err[-1] or "arguments are required" in err[-1], err


def test_unknown_command(capsys):
    assert main(["nosuchcommand"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert ERROR_LINE.match(err[-1]) and "nosuchcommand" in err[-1]
