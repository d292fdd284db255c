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
    assert "trained 2 (of 2)" in out and "32768/32768" in out
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
    trainer = fakes.FakeTrainer(fail=["shapes-clip-XS_s32768_synth_bs64_lr0.002_w8_const"])
    monkeypatch.setattr(runner, "default_train_fn", lambda: trainer)
    monkeypatch.setattr(runner, "default_eval_fn", lambda: fakes.fake_eval)
    d = str(tmp_path / "s")
    assert main(["study", *MICRO, "--dir", d]) == 1
    err = capsys.readouterr().err
    assert "1 run(s) failed: shapes-clip-XS_s32768_synth_bs64_lr0.002_w8_const" in err
    assert main(["study", "status", d]) == 1
    assert "RuntimeError: loss is NaN at step 3" in capsys.readouterr().out


def test_launch_print_lists_train_commands(tmp_path, capsys):
    assert main(["study", "launch", *MICRO, "--dir", str(tmp_path / "s")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sum(ln.startswith("vlscale train --config configs/train.py:model=shapes-") for ln in lines) == 2
    assert lines[-1].startswith("vlscale study collect ")


def test_every_synth_knob_is_a_training_config_field_and_a_typo_exits_2_at_plan(tmp_path, capsys):
    """docs/study.md and configs/data.py promise every SynthConfig knob as `data.synth.knobs.X`."""
    import dataclasses

    from vlscale.configs import train as train_config
    from vlscale.configs.loading import apply_overrides
    from vlscale.data.synth_scene import SynthConfig
    from vlscale.errors import UserError

    from vlscale.commands.train import build_config

    tc = train_config.get_config("model=shapes-clip-XS,data=synth")
    assert set(tc.data.synth.knobs.keys()) == {f.name for f in dataclasses.fields(SynthConfig)}
    # exactly what `vlscale train --config configs/train.py:... --config.data.synth.knobs.X=V` builds
    tc = build_config("configs/train.py:model=shapes-clip-XS,data=synth",
                      ["--config.data.synth.knobs.p_mention_colour=0.5", "--config.data.synth.knobs.noise_max=3"])
    knobs = SynthConfig.from_dict(tc.data.synth.knobs.to_dict())
    assert knobs.p_mention_colour == 0.5 and knobs.noise_max == 3.0
    with pytest.raises(UserError, match="did you mean p_mention_colour"):
        apply_overrides(tc, [("data.synth.knobs.p_mention_color", "0.5")])
    bad = tmp_path / "bad.py"
    bad.write_text("from vlscale.configs.study import micro_shapes\n\n\ndef get_config():\n"
                   "    c = micro_shapes.get_config()\n"
                   "    c.datasets.synth_noisy.overrides.data.synth.knobs = {'p_mention_color': 0.5}\n    return c\n")
    assert main(["study", "plan", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("vlscale study: error: study config: datasets.synth_noisy.overrides.data.synth.knobs."
                   "p_mention_color is not a training config field (configs/train.py); did you mean "
                   "datasets.synth_noisy.overrides.data.synth.knobs.p_mention_colour?")
    bad.write_text("from vlscale.configs.study import micro_shapes\n\n\ndef get_config():\n"
                   "    c = micro_shapes.get_config()\n"
                   "    c.datasets.synth_noisy.overrides.data.synth.knobs = {'colours': ['red', 'mauve']}\n"
                   "    return c\n")
    assert main(["study", "plan", "--config", str(bad)]) == 2
    assert "datasets.synth_noisy: data.synth.knobs: unknown shapes/colours/sizes ['mauve']" in capsys.readouterr().err
