"""The local runner with a fake trainer/evaluator: a whole study, resume after a kill, failures, dataset studies."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.study import fakes
from vlscale.errors import UserError
from vlscale.study import config as study_config
from vlscale.study import layout, runner
from vlscale.study import status as status_lib


def small_study(**changes):
    cfg = study_config.load("tiny_shapes")
    cfg.models = {"clip": ["shapes-clip-XS", "shapes-clip-S", "shapes-clip-M"],
                  "mammut": ["shapes-mammut-XS", "shapes-mammut-S", "shapes-mammut-M"]}
    cfg.max_samples_seen = {}
    cfg.samples_seen = [256, 512, 1024, 2048, 4096]
    cfg.sweep = {"lr": [1e-3], "global_batch_size": [32], "warmup": [4]}
    cfg.fit.bootstrap = 0
    cfg.fit.benchmarks = [f"{d}/{m}" for d, m in fakes.BENCHES]
    for k, v in changes.items():
        cfg[k] = v
    study_config.validate(cfg)
    return cfg


def run(cfg, d, trainer=None, **kw):
    return runner.run_study(cfg, d, train_fn=trainer or fakes.FakeTrainer(), eval_fn=fakes.fake_eval,
                            config_fn=fakes.config_fn, progress=lambda s: None, **kw)


def test_const_study_runs_evaluates_and_reports(tmp_path):
    out = run(small_study(), tmp_path)
    assert out.exit_code == 0 and set(out.statuses.values()) == {"done"}
    df = pd.read_csv(tmp_path / "results.csv")
    # 6 models x 5 budgets (all past the 4-step warm-up) x 2 benchmarks.
    assert len(df) == 6 * 5 * 2
    assert sorted(df["samples_seen"].unique()) == [256, 512, 1024, 2048, 4096]
    md = (tmp_path / "report.md").read_text()
    assert "## Verdict" in md and "**const** protocol" in md
    # The fake laws put MaMMUT below CLIP at large compute; the report must find that.
    assert "mammut below clip" in md
    assert "## Runs" in md and "shapes-clip-M_s4096_synth_bs32_lr0.001_w4_const" in md
    pngs = sorted((tmp_path / "figures").glob("*.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 5000 for p in pngs)
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<h2>Verdict</h2>" in page and 'src="figures' not in page
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert "mammut" in fit["const"]["verdict"]
    # keep_checkpoints="final": only the newest checkpoint of a finished, evaluated run stays.
    ck = tmp_path / "runs" / "shapes-clip-XS_s4096_synth_bs32_lr0.001_w4_const" / "checkpoints"
    assert [p.name for p in ck.iterdir()] == ["128"]


def test_rerun_skips_finished_runs(tmp_path):
    cfg = small_study()
    run(cfg, tmp_path, report=False)
    before = (tmp_path / "results.csv").read_bytes()
    trainer = fakes.FakeTrainer()
    out = run(cfg, tmp_path, trainer, report=False)
    assert trainer.calls == [] and out.exit_code == 0
    assert (tmp_path / "results.csv").read_bytes() == before


@pytest.mark.parametrize("kill_after", [1, 90, 200])
def test_kill_midway_then_rerun_gives_the_same_results(tmp_path, kill_after):
    cfg = small_study(keep_checkpoints="all")
    run(cfg, tmp_path / "straight", report=False)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "killed", fakes.FakeTrainer(kill_after_steps=kill_after), report=False)
    st = status_lib.collect_status(tmp_path / "killed")
    assert st.counts["interrupted"] == 1 and st.counts["done"] >= 0
    out = run(cfg, tmp_path / "killed", report=False)
    assert out.exit_code == 0
    a = (tmp_path / "straight" / "results.csv").read_bytes()
    b = (tmp_path / "killed" / "results.csv").read_bytes()
    assert a == b


def test_failed_run_is_recorded_and_the_rest_go_on(tmp_path):
    cfg = small_study()
    bad = "shapes-mammut-S_s4096_synth_bs32_lr0.001_w4_const"
    out = run(cfg, tmp_path, fakes.FakeTrainer(fail=[bad]))
    assert out.failed == [bad] and out.exit_code == 1
    assert sum(s == "done" for s in out.statuses.values()) == 5
    state = layout.read_state(tmp_path, bad)
    assert state["status"] == "failed" and "loss is NaN" in state["error"]
    assert "Traceback" in (layout.run_dir(tmp_path, bad) / layout.ERROR_FILE).read_text()
    md = (tmp_path / "report.md").read_text()
    assert "## Failed runs" in md and "loss is NaN" in md
    # The rerun retries the failed run (here it now succeeds).
    out = run(cfg, tmp_path)
    assert out.exit_code == 0


def test_cosine_study_one_run_per_budget_and_replicate_noise(tmp_path):
    cfg = small_study(schedule="cosine")
    cfg.models = {"clip": ["shapes-clip-XS", "shapes-clip-S"], "mammut": ["shapes-mammut-XS", "shapes-mammut-S"]}
    cfg.replicates = {"count": 2, "models": ["shapes-clip-S"], "samples_seen": []}
    cfg.fit.fit_fraction = None
    out = run(cfg, tmp_path)
    assert len(out.statuses) == 4 * 5 + 5  # + one extra seed for every clip-S cell
    md = (tmp_path / "report.md").read_text()
    assert "**cosine** protocol" in md and "run-to-run noise" in md and "std over seeds, 5 cells" in md


def test_cooldowns_start_from_const_checkpoints_and_both_verdicts_show(tmp_path):
    cfg = small_study(cooldown_fraction=0.25)
    plan = runner.open_study(cfg, tmp_path)
    cds = plan.stage(1)
    assert len(cds) == 6 * 5 and all(r.depends_on for r in cds)
    r = next(r for r in cds if r.model == "shapes-clip-XS" and r.budgets == (640,))
    assert r.init_from == "shapes-clip-XS_s4096_synth_bs32_lr0.001_w4_const@16" and r.cooldown_steps == 4
    out = run(cfg, tmp_path)
    assert out.exit_code == 0
    md = (tmp_path / "report.md").read_text()
    assert "**const-cooldown** protocol" in md and "### Protocols side by side" in md


def test_a_failed_parent_fails_its_cooldowns(tmp_path):
    cfg = small_study(cooldown_fraction=0.25)
    cfg.models = {"clip": ["shapes-clip-XS", "shapes-clip-S"], "mammut": ["shapes-mammut-XS", "shapes-mammut-S"]}
    bad = "shapes-clip-XS_s4096_synth_bs32_lr0.001_w4_const"
    out = run(cfg, tmp_path, fakes.FakeTrainer(fail=[bad]), report=False)
    kids = [n for n in out.statuses if n.startswith("shapes-clip-XS") and "cooldown" in n]
    assert len(kids) == 5 and all(out.statuses[k] == "failed" for k in kids)
    assert "did not finish" in layout.read_state(tmp_path, kids[0])["error"]


def test_dataset_comparison(tmp_path):
    cfg = small_study()
    cfg.models = {"mammut": ["shapes-mammut-XS", "shapes-mammut-S", "shapes-mammut-M"]}
    cfg.datasets = {"synth": {"data": "synth", "overrides": {}},
                    "synth_noisy": {"data": "synth", "overrides": {"data": {"synth": {"knobs": {
                        "p_mention_colour": 0.5}}}}}}
    cfg.fit.group_by = "pretrain_dataset"
    cfg.fit.groups = ["synth", "synth_noisy"]
    out = run(cfg, tmp_path)
    assert len(out.statuses) == 6 and out.exit_code == 0
    md = (tmp_path / "report.md").read_text()
    assert "## Verdict" in md and "synth_noisy" in md


def test_a_different_config_in_the_same_dir_is_refused(tmp_path):
    run(small_study(), tmp_path, report=False)
    cfg = small_study(samples_seen=[256, 512, 1024])
    with pytest.raises(UserError, match="different samples_seen"):
        runner.open_study(cfg, tmp_path)
    # Fit settings may change: the report is rebuilt, nothing retrains.
    cfg = small_study()
    cfg.fit.fit_fraction = 0.3
    trainer = fakes.FakeTrainer()
    assert run(cfg, tmp_path, trainer).exit_code == 0 and trainer.calls == []


def test_a_law_with_fewer_parameters_when_the_first_cannot_be_fitted(tmp_path):
    cfg = small_study()
    cfg.models = {"clip": ["shapes-clip-XS"], "mammut": ["shapes-mammut-XS"]}
    cfg.fit.form = ["saturation_both", "power"]
    cfg.fit.fit_fraction = None
    cfg.samples_seen = [256, 512, 1024]  # 3 points per group: too few for the 4-parameter law
    out = run(cfg, tmp_path)
    assert out.exit_code == 0
    md = (tmp_path / "report.md").read_text()
    assert ("law `power` (power instead of saturation_both: clip has 3 fitted frontier points, not enough for "
            "saturation_both (4 parameters); power keeps only 1 point to spare in clip: the interval is wide)") in md
    assert "verdict on 2 of 2 benchmarks" in md
    assert "| synth_colour_shape/acc1 | clip | `power`: a=" in md


def test_a_benchmark_that_cannot_be_fitted_is_listed_and_the_others_are_reported(tmp_path):
    cfg = small_study()
    cfg.models = {"clip": ["shapes-clip-XS"], "mammut": ["shapes-mammut-XS"]}
    cfg.fit.form = ["power"]
    cfg.fit.fit_fraction = None
    cfg.samples_seen = [256, 512, 1024]
    out = run(cfg, tmp_path, report=False)
    assert out.exit_code == 0
    df = pd.read_csv(tmp_path / "results.csv")
    # drop clip's 1024-sample retrieval row: that benchmark's clip frontier keeps 2 points, too few for power
    bench = f"{fakes.BENCHES[1][0]}/{fakes.BENCHES[1][1]}"
    ds, metric = fakes.BENCHES[1]
    keep = ~((df["downstream_dataset"] == ds) & (df["metric"] == metric) & (df["samples_seen"] == 1024)
             & (df["model_type"] == "clip"))
    df[keep].to_csv(tmp_path / "results.csv", index=False)
    from vlscale.study import report as report_lib

    plan = runner.open_study(cfg, tmp_path)
    report_lib.write_report(cfg, plan, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "**const** protocol — verdict on 1 of 2 benchmarks" in md
    assert (f"- **{bench}**: not fitted: clip has 2 fitted frontier points; the smallest law tried (power, 2 "
            "parameters) needs at least 3; add budgets to `samples_seen` or models to `models`, or list a law with "
            "fewer parameters in `fit.form`.") in md
    assert "--" not in md.split("## Runs")[0].replace("---|", "")  # no command-line flags in study advice
    assert len(list((tmp_path / "figures").glob("*.png"))) == 1
    def strict(token):
        raise AssertionError(f"fit.json holds {token}")

    fit = json.loads((tmp_path / "fit.json").read_text(), parse_constant=strict)
    assert fit["const"]["benchmarks_fitted"] == 1 and bench in fit["const"]["unfitted"]


def test_a_run_whose_evaluation_meets_nan_scores_is_marked_failed_with_that_reason(tmp_path):
    # The real evaluator on a workdir whose checkpoint has a NaN visual projection (the trainer is a stand-in that
    # places it): the run fails in eval, its state names the checkpoint and the task, and no row is written.
    import numpy as np

    from tests.eval.conftest import make_workdir, perturbed_params
    from vlscale.eval import evaluate_run
    from vlscale.models import saved_params

    params = perturbed_params("tiny-clip")
    params["visual"]["proj"] = np.full_like(np.asarray(params["visual"]["proj"]), np.nan)
    saved_params.save_params(tmp_path / "nan_ckpt", params, "tiny-clip")
    cfg = small_study()
    cfg.eval.tasks = [{"task": "zeroshot", "dataset": "synth:colour", "num_examples": 16}]
    cfg.fit.benchmarks = ["synth_colour/acc1"]
    name = "shapes-clip-XS_s4096_synth_bs32_lr0.001_w4_const"

    def place_checkpoint(config, workdir):
        make_workdir(tmp_path / "study" / "runs" / name, tmp_path / "nan_ckpt", "tiny-clip", steps=(8,))

    out = runner.run_study(cfg, tmp_path / "study", train_fn=place_checkpoint, config_fn=fakes.config_fn,
                           eval_fn=lambda w, suite, results: evaluate_run(w, suite, results=results, batch_size=16),
                           only=[name], progress=lambda s: None)
    assert out.failed == [name]
    state = layout.read_state(tmp_path / "study", name)
    assert state["status"] == "failed" and state["failed_in"] == "eval"
    assert state["error"].startswith("NonFiniteScores: checkpoint ") and "zeroshot on synth_colour stopped" in state["error"]
    assert "NaN or infinite image features or logits" in state["error"]
    assert not (layout.run_dir(tmp_path / "study", name) / layout.RESULTS_FILE).exists()
