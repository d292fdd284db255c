"""`vlscale study` through the CLI entry point, with the fake trainer/evaluator patched in for run and collect."""

from __future__ import annotations

import pytest

from tests.study import fakes
from vlscale.cli import main
from vlscale.study import layout, runner

MICRO = ["--config", "micro_shapes"]


@pytest.fixture
def fake_backends(monkeypatch):
    trainer = fakes.FakeTrainer()
    monkeypatch.setattr(runner, "default_train_fn", lambda: trainer)
    monkeypatch.setattr(runner, "default_eval_fn", lambda: fakes.fake_eval)
    return trainer


def test_plan_prints_runs_and_totals(capsys):
    assert main(["study", "plan"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("study tiny_shapes: 3 runs")
    assert "shapes-mammut-XS_s13056_synth_bs16_lr0.002_w8_const" in out and "3 compilations" in out
    assert main(["study", "plan", "--config", "micro_shapes", "--json"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_train_only_then_status_then_collect(tmp_path, capsys, fake_backends):
    d = str(tmp_path / "s")
    assert main(["study", "run", *MICRO, "--dir", d, "--no-eval"]) == 0
    assert not (tmp_path / "s" / "results.csv").exists()
    assert main(["study", "status", d]) == 0
    out = capsys.readouterr().out
    assert "trained 2 (of 2)" in out and "256/256" in out
    # collect evaluates what is missing, fits and reports; the config comes from DIR/study.json.
    assert main(["study", "collect", d]) == 0
    out = capsys.readouterr().out
    assert "report: " in out and "done 2 (of 2)" in out
    assert (tmp_path / "s" / "report.md").is_file() and (tmp_path / "s" / "results.csv").is_file()


def test_one_run_by_name_as_launched_jobs_do(tmp_path, capsys, fake_backends):
    d = tmp_path / "s"
    assert main(["study", "launch", *MICRO, "--dir", str(d), "--backend", "slurm"]) == 0
    first = (d / "launch" / "runs_stage0.txt").read_text().split()[0]
    assert main(["study", "run", "--dir", str(d), "--only", first, "--no-eval"]) == 0
    assert fake_backends.calls == [first]
    assert layout.read_state(d, first)["status"] == "trained"


def test_a_failed_run_gives_exit_1_and_status_says_why(tmp_path, capsys, monkeypatch):
    trainer = fakes.FakeTrainer(fail=["shapes-clip-XS_s256_synth_bs32_lr0.002_w2_const"])
    monkeypatch.setattr(runner, "default_train_fn", lambda: trainer)
    monkeypatch.setattr(runner, "default_eval_fn", lambda: fakes.fake_eval)
    d = str(tmp_path / "s")
    assert main(["study", *MICRO, "--dir", d]) == 1
    err = capsys.readouterr().err
    assert "1 run(s) failed: shapes-clip-XS_s256_synth_bs32_lr0.002_w2_const" in err
    assert main(["study", "status", d]) == 1
    assert "RuntimeError: loss is NaN at step 3" in capsys.readouterr().out


def test_launch_print_lists_train_commands(tmp_path, capsys):
    assert main(["study", "launch", *MICRO, "--dir", str(tmp_path / "s")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sum(ln.startswith("vlscale train --config configs/train.py:model=shapes-") for ln in lines) == 2
    assert lines[-1].startswith("vlscale study collect ")
