"""Cluster scripts from `vlscale study launch`, checked without a cluster: bash syntax, one task per planned run,
the dependency flags, and that a printed `vlscale train` line rebuilds exactly the run's training config."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from vlscale.configs.loading import flatten
from vlscale.errors import UserError
from vlscale.study import config as study_config
from vlscale.study import launch, runner
from vlscale.study.runner import build_train_config


def _study(cooldowns: bool):
    cfg = study_config.load()
    cfg.cooldown_fraction = 0.2 if cooldowns else 0.0
    return cfg


def _bash_ok(path):
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_slurm_arrays_with_afterok_cooldowns_and_a_final_collect(tmp_path):
    cfg = _study(cooldowns=True)
    plan = runner.open_study(cfg, tmp_path)
    opts = launch.LaunchOptions(backend="slurm", repo="/opt/vlscale", partition="gpu", nodes=2, gpus_per_node=8)
    lines = launch.launch(cfg, plan, tmp_path, opts)
    d = tmp_path / "launch"
    for name in ("stage0.sbatch", "stage1.sbatch", "collect.sbatch", "submit.sh"):
        _bash_ok(d / name)
    assert lines[-1].startswith("not submitted")
    s0 = (d / "stage0.sbatch").read_text()
    assert "#SBATCH --array=0-2" in s0 and "#SBATCH --nodes=2" in s0 and "#SBATCH --gpus-per-node=8" in s0
    assert "#SBATCH --partition=gpu" in s0 and "cd /opt/vlscale" in s0
    assert re.search(r'srun --ntasks-per-node=1 vlscale study run --dir \S+ --only "\$RUN" --no-eval --distributed', s0)
    assert (d / "runs_stage0.txt").read_text().split() == [r.name for r in plan.stage(0)]
    assert (d / "runs_stage1.txt").read_text().split() == [r.name for r in plan.stage(1)]
    assert f"--array=0-{len(plan.stage(1)) - 1}" in (d / "stage1.sbatch").read_text()
    sub = (d / "submit.sh").read_text()
    assert "--dependency=afterok:${J0} stage1.sbatch" in sub and "--dependency=afterany:${J1} collect.sbatch" in sub
    assert "vlscale study collect" in (d / "collect.sbatch").read_text()


def test_slurm_submit_runs_sbatch_with_dependencies(tmp_path, monkeypatch):
    """--submit runs submit.sh; a fake sbatch on PATH records the calls."""
    cfg = _study(cooldowns=False)
    plan = runner.open_study(cfg, tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\necho "$@" >> {log}\necho $RANDOM\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    lines = launch.launch(cfg, plan, tmp_path, launch.LaunchOptions(backend="slurm", submit=True))
    calls = log.read_text().splitlines()
    assert calls[0] == "--parsable stage0.sbatch" and calls[1].startswith("--parsable --dependency=afterany:")
    assert len(calls) == 2 and any(x.startswith("collect: ") for x in lines)
    assert not (tmp_path / "launch" / "stage1.sbatch").exists()


def test_tpu_vm_one_ssh_line_per_run_in_stage_order(tmp_path):
    cfg = _study(cooldowns=True)
    plan = runner.open_study(cfg, tmp_path)
    launch.launch(cfg, plan, tmp_path, launch.LaunchOptions(backend="tpu-vm", tpu_name="v5e-64", zone="us-west4-a",
                                                            repo="~/vlscale"))
    script = tmp_path / "launch" / "run_tpu.sh"
    _bash_ok(script)
    text = script.read_text()
    runs = re.findall(r"--worker=all --command .*--only (\S+) --no-eval --distributed", text)
    assert [r.strip("'") for r in runs] == [r.name for r in plan.runs]
    assert text.count("gcloud compute tpus tpu-vm ssh v5e-64 --zone us-west4-a") == len(plan.runs) + 1
    assert "--worker=0 --command" in text.splitlines()[-2] and "study collect" in text.splitlines()[-2]
    with pytest.raises(UserError, match="--tpu-name and --zone"):
        launch.launch(cfg, plan, tmp_path, launch.LaunchOptions(backend="tpu-vm"))


def test_print_gives_vlscale_train_lines_that_rebuild_each_runs_config(tmp_path):
    from vlscale.train.cli import build_config

    cfg = _study(cooldowns=True)
    plan = runner.open_study(cfg, tmp_path)
    lines = launch.launch(cfg, plan, tmp_path, launch.LaunchOptions(backend="print"))
    train_lines = [ln for ln in lines if ln.startswith("vlscale train ")]
    assert len(train_lines) == len(plan.runs)
    assert lines[-1].startswith("vlscale study collect ")
    assert (tmp_path / "launch" / "commands.sh").read_text().splitlines() == lines
    for line, run in zip(train_lines, plan.runs):
        argv = shlex.split(line)[2:]
        spec = argv[argv.index("--config") + 1]
        overrides = [a for a in argv if a.startswith("--config.")]
        rebuilt = flatten(build_config(spec, overrides))
        want = flatten(build_train_config(cfg, run, tmp_path.resolve()))
        assert rebuilt == want, run.name
        assert argv[argv.index("--workdir") + 1] == str(tmp_path.resolve() / "runs" / run.name)
    with pytest.raises(UserError, match="--submit needs"):
        launch.launch(cfg, plan, tmp_path, launch.LaunchOptions(backend="print", submit=True))
