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
    assert re.search(r'srun --ntasks-per-node=1 /\S+/vlscale study run --dir \S+ --only "\$RUN" --no-report --distributed', s0)
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
    runs = re.findall(r"--worker=all --command .*--only (\S+) --no-report --distributed", text)
    assert [r.strip("'") for r in runs] == [r.name for r in plan.runs]
    assert text.count("gcloud compute tpus tpu-vm ssh v5e-64 --zone us-west4-a") == len(plan.runs) + 1
    assert "--worker=0 --command" in text.splitlines()[-2] and "study collect" in text.splitlines()[-2]
    with pytest.raises(UserError, match="--tpu-name and --zone"):
        launch.launch(cfg, plan, tmp_path, launch.LaunchOptions(backend="tpu-vm"))


def test_print_gives_vlscale_train_lines_that_rebuild_each_runs_config(tmp_path):
    from vlscale.commands.train import build_config

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


def test_slurm_jobs_run_this_vlscale_by_absolute_path_with_resources_from_the_config(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    cfg = _study(cooldowns=False)
    cfg.slurm = {"time": "2-00:00:00", "cpus_per_task": 16, "mem": "64G"}
    study_config.validate(cfg)
    plan = runner.open_study(cfg, tmp_path)
    launch.launch(cfg, plan, tmp_path, launch.LaunchOptions(backend="slurm"))
    s0 = (tmp_path / "launch" / "stage0.sbatch").read_text()
    exe = Path(sys.executable).absolute().with_name("vlscale")  # the venv's entry point, as the user launched it
    assert exe.is_file()
    assert f'srun --ntasks-per-node=1 {exe} study run --dir ' in s0
    assert f"{exe} study collect " in (tmp_path / "launch" / "collect.sbatch").read_text()
    for line in ("#SBATCH --time=2-00:00:00", "#SBATCH --cpus-per-task=16", "#SBATCH --mem=64G"):
        assert line in s0
    # flags win over the config
    launch.launch(cfg, plan, tmp_path, launch.LaunchOptions(backend="slurm", time="90", cpus_per_task=4, mem="500m"))
    s0 = (tmp_path / "launch" / "stage0.sbatch").read_text()
    assert "#SBATCH --time=90\n" in s0 and "#SBATCH --cpus-per-task=4\n" in s0 and "#SBATCH --mem=500M\n" in s0
    # no entry-point script beside the interpreter: the absolute interpreter with -m
    monkeypatch.setattr(sys, "executable", str(tmp_path / "py" / "python3"))
    assert launch.current_vlscale() == f"{tmp_path / 'py' / 'python3'} -m vlscale"
    cfg.slurm = {}
    launch.launch(cfg, plan, tmp_path, launch.LaunchOptions(backend="slurm"))
    s0 = (tmp_path / "launch" / "stage0.sbatch").read_text()
    assert f"{tmp_path / 'py' / 'python3'} -m vlscale study run" in s0
    assert "#SBATCH --time=24:00:00" in s0 and "--cpus-per-task" not in s0 and "--mem" not in s0


@pytest.mark.parametrize("change, message", [
    ({"time": "24h"}, "--time '24h': use a SLURM time limit"),
    ({"mem": "lots"}, "--mem 'lots': use a SLURM memory size"),
])
def test_malformed_slurm_resources_are_one_line_errors(tmp_path, change, message):
    cfg = _study(cooldowns=False)
    plan = runner.open_study(cfg, tmp_path)
    with pytest.raises(UserError, match=message):
        launch.launch(cfg, plan, tmp_path, launch.LaunchOptions(backend="slurm", **change))
    cfg.slurm = {"time": "1:2:3:4"}
    with pytest.raises(UserError, match="study config slurm.time '1:2:3:4'"):
        study_config.validate(cfg)


def test_cli_rejects_a_malformed_time_with_exit_2(tmp_path, capsys):
    from vlscale.cli import main

    rc = main(["study", "launch", "--config", "micro_shapes", "--dir", str(tmp_path / "s"), "--backend", "slurm",
               "--time", "tomorrow"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--time 'tomorrow'" in err[0]
    assert not (tmp_path / "s" / "launch").exists()


def _fake_squeue(tmp_path, monkeypatch, active: dict):
    """An squeue on PATH that knows the array tasks in ``active`` (job id -> state) and no other."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    cases = "".join(f'  {job}) echo {state};;\n' for job, state in active.items())
    (bin_dir / "squeue").write_text(
        '#!/bin/bash\nwhile [ $# -gt 0 ]; do [ "$1" = --jobs ] && job=$2; shift; done\n'
        f'case "$job" in\n{cases}  *) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1;;\nesac\n')
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def test_status_reports_a_launched_job_that_died_with_its_logs_last_line(tmp_path, monkeypatch):
    from vlscale.study import status

    cfg = _study(cooldowns=False)
    plan = runner.open_study(cfg, tmp_path)
    launch.launch(cfg, plan, tmp_path, launch.LaunchOptions(backend="slurm"))
    logs = tmp_path / "launch" / "logs"
    names = [r.name for r in plan.stage(0)]
    # task 1 died before vlscale started (what a bare `vlscale` without the venv did); task 2 is still running
    (logs / f"vlscale-{plan.name}-stage0_4242_1.out").write_text(
        "slurmstepd: error: execve(): vlscale: No such file or directory\n"
        "srun: error: node1: task 0: Exited with exit code 2\n\n")
    (logs / f"vlscale-{plan.name}-stage0_4242_2.out").write_text("vlscale train: ... new at step 0/8\n")
    _fake_squeue(tmp_path, monkeypatch, {"4242_2": "RUNNING"})
    st = status.collect_status(tmp_path)
    rows = {r["run"]: r for r in st.rows}
    assert rows[names[1]]["status"] == "failed"
    assert rows[names[1]]["note"].startswith("slurm job 4242_1 ended: srun: error: node1: task 0: Exited with exit "
                                             "code 2 (")
    assert rows[names[2]]["status"] == "running" and rows[names[2]]["note"].startswith("slurm job 4242_2 started")
    assert rows[names[0]]["status"] == "pending" and rows[names[0]]["note"] == ""  # no log: not started yet
    from vlscale.cli import main

    assert main(["study", "status", str(tmp_path)]) == 1  # a failed run: non-zero, as for any failed run
