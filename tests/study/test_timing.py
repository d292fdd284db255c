"""One time model for the plan and the progress line, calibrated from the runs this machine has measured; `study
status` reads a running run's samples from its latest metrics line."""

from __future__ import annotations

import json

import pytest

from tests.study import fakes
from vlscale.study import config as study_config
from vlscale.study import layout, runner, timing
from vlscale.study import status as status_lib
from vlscale.study.plan import fmt_seconds, make_plan


def _measured_run(d, run, *, rates, train_s, eval_s):
    """A trained, evaluated run as the trainer and runner leave it: metrics lines, final.json, study state."""
    wd = layout.run_dir(d, run.name)
    wd.mkdir(parents=True, exist_ok=True)
    step = run.steps // len(rates)
    lines = [{"step": (i + 1) * step, "samples_seen": (i + 1) * step * run.global_batch_size, "samples_per_s": r}
             for i, r in enumerate(rates)]
    (wd / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (wd / "final.json").write_text(json.dumps({"samples_seen": run.samples}))
    layout.update_state(d, run.name, status="done", train_s=train_s, eval_s=eval_s)


def test_config_estimate_counts_each_shapes_startup_once():
    cfg = study_config.load("tiny_shapes")
    tm = timing.from_config(cfg)
    plan = make_plan(cfg)
    r = plan.runs[0]
    steady = r.trained_samples * r.train_gflops_per_sample / cfg.estimate.train_gflops_per_s
    assert r.est_train_s == pytest.approx(steady + cfg.estimate.compile_s)
    assert r.est_eval_s == pytest.approx(cfg.estimate.eval_s * len(r.budgets))
    assert plan.total_est_s == pytest.approx(sum(tm.train_s(x) + tm.eval_total_s(x) for x in plan.runs))
    assert "(config estimate)" in plan.table()


def test_measured_runs_calibrate_the_plan_and_the_progress_line(tmp_path):
    cfg = study_config.load("micro_shapes")
    plan = runner.open_study(cfg, tmp_path)
    first, second = plan.runs
    # 2000 samples/s after a first logged line that held the compilation (50 samples/s), 30 s of training in all
    _measured_run(tmp_path, first, rates=[50.0, 2000.0, 2000.0, 2000.0], train_s=30.0, eval_s=6.0)
    tm = timing.calibrated(cfg, plan, tmp_path)
    assert tm.source == "measured: 1 run on this machine"
    assert tm.train_gflops_per_s == pytest.approx(2000.0 * first.train_gflops_per_sample)
    assert tm.startup_s == pytest.approx(30.0 - first.samples / 2000.0)
    assert tm.eval_s == pytest.approx(6.0 / len(first.budgets))
    timed = make_plan(cfg, tm)
    assert timed.run(first.name).est_train_s == pytest.approx(30.0)  # the model reproduces what it measured
    want = timed.run(second.name)
    lines = []
    runner.run_study(cfg, tmp_path, train_fn=fakes.FakeTrainer(), eval_fn=fakes.fake_eval,
                     config_fn=fakes.config_fn, progress=lines.append, report=False)
    assert f"[2/2] {second.name}; about {fmt_seconds(want.est_train_s + want.est_eval_s)} left " \
           "(measured: 1 run on this machine)" in lines
    assert (f"  {second.name}: training ({second.samples} samples, batch {second.global_batch_size}, est. "
            f"{fmt_seconds(want.est_train_s)} training + {fmt_seconds(want.est_eval_s)} evaluation)") in lines


def test_status_shows_a_running_runs_samples_from_its_latest_metrics_line(tmp_path):
    cfg = study_config.load("micro_shapes")
    plan = runner.open_study(cfg, tmp_path)
    run = plan.runs[0]
    wd = layout.run_dir(tmp_path, run.name)
    wd.mkdir(parents=True)
    layout.update_state(tmp_path, run.name, status="running", owner=layout.here())
    row = status_lib.run_status(tmp_path, run)  # started, nothing logged yet: not "0 samples"
    assert row["progress"] == f"-/{run.samples}" and row["note"].endswith("no step logged yet (loading data or compiling)")
    (wd / "metrics.jsonl").write_text(json.dumps({"step": 2, "samples_seen": 64}) + "\n"
                                      + json.dumps({"step": 4, "samples_seen": 128}) + "\n")
    layout.update_state(tmp_path, run.name, status="running", owner=layout.here())
    row = status_lib.run_status(tmp_path, run)
    assert row["status"] == "running" and row["progress"] == f"128/{run.samples}"
