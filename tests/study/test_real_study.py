"""The real path, end to end: `micro_shapes` (docs/study.md's dataset-comparison example, run as printed there)
trains CLIP-XS on two synthetic datasets with vlscale.train, evaluates with vlscale.eval, fits, gives a verdict and
reports with figures; killed midway and rerun it writes the same results.csv byte for byte.

All studies run in this process, so the train step and evaluation compile once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from vlscale.study import config as study_config
from vlscale.study import layout, runner
from vlscale.study import status as status_lib

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[2] / "docs" / "study.md"
SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "study" / "micro_shapes.py"


def _docs_block(doc: str, lang: str, after: str) -> str:
    begin = doc.index(f"```{lang}\n", doc.index(after)) + len(lang) + 4
    return doc[begin:doc.index("```", begin)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """docs/study.md's dataset-comparison block, saved as a file and run with the documented command."""
    from vlscale.cli import main

    doc = DOC.read_text()
    code = _docs_block(doc, "python", "**Comparing datasets**")
    command = _docs_block(doc, "bash", "**Comparing datasets**").split()
    assert command[:4] == ["vlscale", "study", "--config", "configs/study/micro_shapes.py"] and command[4] == "--dir"
    d = tmp_path_factory.mktemp("straight")
    cfg_file = d / "micro_shapes.py"
    cfg_file.write_text(code)
    code_ok = code == SHIPPED.read_text()
    rc = main(["study", "--config", str(cfg_file), "--dir", str(d / "study")])
    return d / "study", rc, code_ok


def test_the_documented_example_is_the_shipped_smoke_study(straight):
    assert straight[2]


def test_micro_study_trains_evaluates_and_gives_a_verdict_with_figures(straight):
    d, rc, _ = straight
    assert rc == 0, [layout.read_state(d, r) for r in status_lib.collect_status(d).rows if r["status"] != "done"]
    df = pd.read_csv(d / "results.csv")
    assert set(df["pretrain_dataset"]) == {"synth", "synth_noisy"} and set(df["lr_scheduler"]) == {"const"}
    assert {"synth_colour", "synth_retrieval"} <= set(df["downstream_dataset"])
    for run, g in df.groupby("run"):  # every milestone is evaluated
        assert {8192, 12288, 16384, 24576, 32768} <= set(g["samples_seen"]), run
    # each run was trained on its own dataset's knobs
    knobs = {ds: json.loads((layout.run_dir(d, f"shapes-clip-XS_s32768_{ds}_bs64_lr0.002_w8_const") / "run.json")
                            .read_text())["config"]["data"]["synth"]["knobs"] for ds in ("synth", "synth_noisy")}
    assert knobs["synth"]["p_mention_colour"] == 0.95 and knobs["synth_noisy"]["p_mention_colour"] == 0.5
    # colour zero-shot leaves chance (1/12) on the frontier: the study measures learning, not noise
    colour = df[(df["downstream_dataset"] == "synth_colour") & (df["metric"] == "acc1")]
    assert colour.groupby("pretrain_dataset")["value"].max().min() > 0.2
    md = (d / "report.md").read_text()
    fit = json.loads((d / "fit.json").read_text())["const"]
    # a verdict on at least one benchmark, with its figure, law table and held-out table
    assert fit["benchmarks_fitted"] >= 1 and fit["verdict"]
    assert f"verdict on {fit['benchmarks_fitted']} of 2 benchmarks" in md
    figures = sorted((d / "figures").glob("*.png"))
    assert len(figures) == fit["benchmarks_fitted"] and all(p.stat().st_size > 5000 for p in figures)
    held = md.split("### Held-out points (const)")[1].split("###")[0]
    assert "| 95% prediction interval | |err| pp | inside the prediction interval |" in held
    assert held.count("| shapes-clip-XS |") >= 2  # the 32k checkpoints of both datasets are held out
    assert (d / "report.html").read_text().count("data:image/png;base64,") == len(figures)
    st = status_lib.collect_status(d)
    assert st.counts["done"] == 2


def test_killed_midway_and_rerun_gives_the_same_results(straight, tmp_path):
    d0 = straight[0]
    cfg = study_config.load("micro_shapes")
    real = runner.default_train_fn()
    calls = []

    def killed_midway(config, workdir, **kw):
        calls.append(config.run_name)
        if len(calls) == 2:  # the second run (synth_noisy) dies at step 160 of 512, past its 8192-sample milestone
            real(config, workdir, steps=160)
            raise KeyboardInterrupt
        return real(config, workdir, **kw)

    with pytest.raises(KeyboardInterrupt):
        runner.run_study(cfg, tmp_path, train_fn=killed_midway, progress=lambda s: None)
    st = status_lib.collect_status(tmp_path)
    assert st.counts["done"] == 1 and st.counts["interrupted"] == 1
    out = runner.run_study(cfg, tmp_path, progress=lambda s: None)
    assert out.exit_code == 0
    assert (tmp_path / "results.csv").read_bytes() == (d0 / "results.csv").read_bytes()


