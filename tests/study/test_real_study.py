"""The real path, end to end: `micro_shapes` trains CLIP-XS and MaMMUT-XS with vlscale.train, evaluates with
vlscale.eval, fits and reports; killed midway and rerun it writes the same results.csv byte for byte.

All studies run in this process, so each model's train step and evaluation compile once.
"""

from __future__ import annotations

import pandas as pd
import pytest

from vlscale.study import config as study_config
from vlscale.study import layout, runner
from vlscale.study import status as status_lib

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    d = tmp_path_factory.mktemp("straight")
    out = runner.run_study(study_config.load("micro_shapes"), d, progress=lambda s: None)
    return d, out


def test_micro_study_trains_evaluates_and_reports(straight):
    d, out = straight
    assert out.exit_code == 0, [layout.read_state(d, r) for r in out.failed]
    df = pd.read_csv(d / "results.csv")
    assert set(df["model_type"]) == {"clip", "mammut"} and set(df["lr_scheduler"]) == {"const"}
    assert {"synth_colour", "synth_retrieval"} <= set(df["downstream_dataset"])
    # Every milestone past the warm-up is evaluated (and the periodic checkpoints the trainer kept).
    for run, g in df.groupby("run"):
        assert {128, 192, 256} <= set(g["samples_seen"]), run
    assert (df["compute_gflops"] > 0).all()
    md = (d / "report.md").read_text()
    assert "## Verdict" in md and "## Runs" in md
    assert (d / "report.html").is_file()
    st = status_lib.collect_status(d)
    assert st.counts["done"] == 2


def test_killed_midway_and_rerun_gives_the_same_results(straight, tmp_path):
    d0, _ = straight
    cfg = study_config.load("micro_shapes")
    real = runner.default_train_fn()
    calls = []

    def killed_after_three_steps(config, workdir, **kw):
        calls.append(config.run_name)
        if len(calls) == 2:  # the second run (MaMMUT) dies at step 3 of 8, after a checkpoint at step 2
            real(config, workdir, steps=3)
            raise KeyboardInterrupt
        return real(config, workdir, **kw)

    with pytest.raises(KeyboardInterrupt):
        runner.run_study(cfg, tmp_path, train_fn=killed_after_three_steps, progress=lambda s: None)
    st = status_lib.collect_status(tmp_path)
    assert st.counts["done"] == 1 and st.counts["interrupted"] == 1
    out = runner.run_study(cfg, tmp_path, progress=lambda s: None)
    assert out.exit_code == 0
    assert (tmp_path / "results.csv").read_bytes() == (d0 / "results.csv").read_bytes()


def _docs_block(doc: str, lang: str, after: str) -> str:
    start = doc.index(after)
    begin = doc.index(f"```{lang}\n", start) + len(lang) + 4
    return doc[begin:doc.index("```", begin)]


def test_docs_dataset_comparison_runs_verbatim(tmp_path, capsys):
    """docs/study.md's dataset-comparison config, as printed, with the real trainer and evaluator (no fakes)."""
    import json
    from pathlib import Path

    from vlscale.cli import main

    doc = (Path(__file__).resolve().parents[2] / "docs" / "study.md").read_text()
    code = _docs_block(doc, "python", "**Comparing datasets**")
    command = _docs_block(doc, "bash", "**Comparing datasets**").split()
    assert command[:3] == ["vlscale", "study", "--config"] and command[3] == "configs/study/micro_datasets.py"
    cfg_file = tmp_path / "datasets.py"
    cfg_file.write_text(code)
    d = tmp_path / "runs" / "datasets"
    assert main(["study", "--config", str(cfg_file), "--dir", str(d)]) == 0
    df = pd.read_csv(d / "results.csv")
    assert set(df["pretrain_dataset"]) == {"synth", "synth_noisy"} and set(df["model"]) == {"shapes-clip-XS"}
    knobs = {ds: json.loads((d / "runs" / f"shapes-clip-XS_s256_{ds}_bs32_lr0.002_w2_const" / "run.json")
                            .read_text())["config"]["data"]["synth"]["knobs"] for ds in ("synth", "synth_noisy")}
    assert knobs["synth"]["p_mention_colour"] == 0.95 and knobs["synth_noisy"]["p_mention_colour"] == 0.5
    md = (d / "report.md").read_text()
    assert "**const** protocol — verdict on" in md and "of 2 benchmarks" in md
    # the shipped config is the documented one
    shipped = study_config.load("micro_datasets")
    documented = study_config.load(str(cfg_file))
    for key in ("models", "datasets", "fit", "samples_seen", "sweep", "train", "eval"):
        assert shipped[key].to_dict() == documented[key].to_dict() if hasattr(shipped[key], "to_dict") else \
            shipped[key] == documented[key], key
