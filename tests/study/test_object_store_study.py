"""A study directory and evaluation outputs in a bucket (gs://), against the GCS API emulator of
tests/runtime/test_object_store.py, from STORAGE_EMULATOR_HOST alone: the micro study (configs/study/micro_shapes.py,
the sizes tests/study/test_real_study.py runs) planned, trained, evaluated, collected and reported into
gs://BUCKET/study writes the same tables, byte for byte, as the same study on a local disk; its lock is an
object; a bucket that cannot be written fails at the start in one line; `vlscale eval --out gs://...` writes what a
local --out gets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.runtime.test_object_store import ROOT, _env, _make_bucket, emulator  # noqa: F401 - the fixture
from vlscale.runtime import locks, object_store

pytestmark = pytest.mark.slow

BUCKET = "vlscale-study"
STUDY = f"gs://{BUCKET}/study"
MICRO = ["--config", "configs/study/micro_shapes.py"]
RUN = "shapes-clip-XS_s32768_synth_bs64_lr0.002_w8_const"
HOLD = ("import sys; from vlscale.runtime import locks\n"
        "with locks.exclusive(sys.argv[1], flag='--dir', command='holder', object_store=True):\n"
        "    print('ready', flush=True); sys.stdin.read()\n")


def _cli(args, env, check=True):
    p = subprocess.run([sys.executable, "-m", "vlscale", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    if check:
        assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    return p


@contextlib.contextmanager
def _bucket_reader(url):
    """This process reads the emulator's buckets (etils.epath, gcsfs) for the block."""
    import gcsfs

    saved = {k: os.environ.get(k) for k in [object_store.EMULATOR_ENV, *object_store.derived_settings(
        {object_store.EMULATOR_ENV: "x"})]}
    for k in saved:
        os.environ.pop(k, None)
    os.environ[object_store.EMULATOR_ENV] = url
    object_store.configure()
    gcsfs.GCSFileSystem.clear_instance_cache()  # an instance made for another emulator (or none) must not be reused
    try:
        yield
    finally:
        gcsfs.GCSFileSystem.clear_instance_cache()
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


def _gs(path: str):
    from etils import epath

    return epath.Path(path)


@pytest.fixture(scope="module")
def studies(emulator, tmp_path_factory):  # noqa: F811 - the imported fixture
    """The micro study run with `vlscale study` into the bucket, and its first run (--only, the same config and seed)
    into a local folder: training every run twice would double the test's time; the per-run tables and the study's
    table are what the bucket path could change."""
    env = _env(emulator)
    _make_bucket(emulator, BUCKET)
    local = tmp_path_factory.mktemp("local") / "study"
    remote = _cli(["study", *MICRO, "--dir", STUDY], env)
    _cli(["study", "run", *MICRO, "--dir", str(local), "--only", RUN, "--no-report"], env)
    return env, remote, local


def test_micro_study_in_a_bucket_writes_what_a_local_one_writes(studies, emulator):  # noqa: F811
    env, remote, local = studies
    assert f"study directory: {STUDY}" in remote.stdout and f"report: {STUDY}/report.md" in remote.stdout
    with _bucket_reader(emulator):
        d = _gs(STUDY)
        assert (d / "runs" / RUN / "results.csv").read_bytes() == (local / "runs" / RUN / "results.csv").read_bytes()
        table, first_run = (d / "results.csv").read_bytes(), (local / "results.csv").read_bytes()
        assert len(table.splitlines()) == 1 + 108 and len(first_run.splitlines()) == 1 + 54  # 5 checkpoints x 2 tasks
        assert table.startswith(first_run)  # plan order: the first run's rows, then the second's, as locally
        fit = json.loads((d / "fit.json").read_text())["const"]
        assert fit["benchmarks_fitted"] >= 1 and fit["verdict"]
        html = (d / "report.html").read_text()
        assert "<h2>Verdict</h2>" in html and fit["verdict"] in html
        assert f"verdict on {fit['benchmarks_fitted']} of 2 benchmarks" in (d / "report.md").read_text()
        figures = list((d / "figures").iterdir())
        assert len(figures) == fit["benchmarks_fitted"] and all(len(f.read_bytes()) > 5000 for f in figures)
        assert html.count("data:image/png;base64,") == len(figures)
        assert not (d / locks.LOCK_NAME).exists()  # the lock object went with its holder
        assert [p.name for p in (d / "runs" / RUN / "checkpoints").iterdir()] == ["512"]  # keep_checkpoints=final
        assert [p.name for p in (local / "runs" / RUN / "checkpoints").iterdir()] == ["512"]
    status = _cli(["study", "status", STUDY], env)
    assert "done 2 (of 2)" in status.stdout
    plan = _cli(["study", "plan", "--dir", STUDY], env)  # timed from the runs in the bucket
    assert "measured: 2 runs on this machine" in plan.stdout
    with _bucket_reader(emulator):
        table = (_gs(STUDY) / "results.csv").read_bytes()
    collect = _cli(["study", "collect", STUDY], env)  # nothing left to evaluate: the same table again
    assert "evaluating" not in collect.stdout and "done 2 (of 2)" in collect.stdout
    with _bucket_reader(emulator):
        assert (_gs(STUDY) / "results.csv").read_bytes() == table


def test_the_study_lock_is_an_object_that_a_second_writer_respects(studies, emulator):  # noqa: F811
    env = studies[0]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, STUDY], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        busy = _cli(["study", "run", "--dir", STUDY], env, check=False)
        assert busy.returncode == 2 and len(busy.stderr.strip().splitlines()) == 1, busy.stderr
        assert f"--dir {STUDY} is in use by pid {holder.pid} on host" in busy.stderr and "(holder)" in busy.stderr
        holder.send_signal(signal.SIGKILL)  # dies holding it: the object stays
        holder.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    with _bucket_reader(emulator):
        lock = _gs(STUDY) / locks.LOCK_NAME
        assert json.loads(lock.read_text())["pid"] == holder.pid
        with locks.exclusive(STUDY, flag="--dir", command="me", object_store=True) as previous:
            assert previous["pid"] == holder.pid  # same host, dead pid: taken over
            assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert not lock.exists()
        with pytest.raises(RuntimeError):  # an error in the block releases it too
            with locks.exclusive(STUDY, flag="--dir", object_store=True):
                assert lock.exists()
                raise RuntimeError("boom")
        assert not lock.exists()
        # a holder on another machine cannot be checked: refused, saying what to delete once it is known gone
        lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "2026-01-01T00:00:00", "command": "x"}))
        with pytest.raises(locks.Busy) as e:
            with locks.exclusive(STUDY, flag="--dir", object_store=True):
                pass
        assert "pid 1 on host elsewhere" in str(e.value) and f"delete {STUDY}/{locks.LOCK_NAME}" in str(e.value)
        lock.unlink()


def test_a_bucket_that_cannot_be_written_fails_at_the_start(studies, tmp_path):
    env = studies[0]
    for args in (["study", *MICRO, "--dir", "gs://no-such-bucket/study"],
                 ["study", "collect", "gs://no-such-bucket/study"],
                 ["eval", "--checkpoint", f"{STUDY}/runs/{RUN}", "--task", "zeroshot", "--dataset", "synth:colour",
                  "--out", "gs://no-such-bucket/eval", "--results", str(tmp_path / "r.csv")]):
        p = _cli(args, env, check=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
        assert "no-such-bucket" in p.stderr and ("no such bucket" in p.stderr or "not a study directory" in p.stderr)
        assert "step " not in p.stdout  # nothing trained or evaluated
    launch = _cli(["study", "launch", "--dir", STUDY], env, check=False)
    assert launch.returncode == 2 and "give a local or shared folder" in launch.stderr
    # a command that builds its --out as a local folder refuses a bucket instead of writing ./gs:/...
    synth = _cli(["data", "synth", "--out", f"gs://{BUCKET}/synth"], env, check=False)
    assert synth.returncode == 2 and "writes to a local or mounted folder only" in synth.stderr
    assert not (ROOT / "gs:").exists()


def test_eval_out_and_results_in_a_bucket_equal_a_local_out(studies, emulator, tmp_path):  # noqa: F811
    env = studies[0]
    ckpt = f"{STUDY}/runs/{RUN}"
    task = ["--task", "zeroshot", "--dataset", "synth:colour", "--num-examples", "64"]
    _cli(["eval", "--checkpoint", ckpt, *task, "--out", f"gs://{BUCKET}/eval", "--results",
          f"gs://{BUCKET}/eval/results.csv"], env)
    _cli(["eval", "--checkpoint", ckpt, *task, "--out", str(tmp_path / "eval"), "--results",
          str(tmp_path / "eval" / "results.csv")], env)
    with _bucket_reader(emulator):
        remote = _gs(f"gs://{BUCKET}/eval")
        got = (remote / "step_512" / "zeroshot_synth_colour.json").read_bytes()
        assert got == (tmp_path / "eval" / "step_512" / "zeroshot_synth_colour.json").read_bytes()
        assert json.loads(got)["step"] == 512 and json.loads(got)["checkpoint"].startswith(ckpt)
        assert (remote / "results.csv").read_bytes() == (tmp_path / "eval" / "results.csv").read_bytes()
