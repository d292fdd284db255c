"""SIGTERM to one of two processes (jax.distributed, 4 CPU devices each, the default data path), while the run starts
and mid-run: both save the same step at the next agreement step and exit 143, and the rerun ends bit-identical to
an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import portpicker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 8
LOG_EVERY, STOP_CHECK_EVERY = 2, 3  # agreement steps: 2, 3, 4, 6, 8
DETERMINISTIC = ("step", "samples_seen", "loss", "lr", "grad_norm", "logit_scale")


def _cmd(workdir, port, i):
    return [sys.executable, "-m", "vlscale", "train", "--config", "configs/train.py:model=tiny-clip,data=synth",
            "--workdir", str(workdir), "--no-progress", "--config.global_batch_size=16",
            f"--config.total_samples={16 * STEPS}", "--config.warmup=2", f"--config.log_every={LOG_EVERY}",
            f"--config.stop_check_every={STOP_CHECK_EVERY}", "--config.checkpoint_every=100",
            "--config.mesh.data=2", "--config.mesh.fsdp=4",
            "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]


def _start(workdir, cache):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               VLSCALE_COMPILATION_CACHE=str(cache), PYTHONUNBUFFERED="1")
    port = portpicker.pick_unused_port()
    return [subprocess.Popen(_cmd(workdir, port, i), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]


def _finish(procs):
    """(returncodes, stdouts, stderrs); kills what is left if one hangs."""
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], [out for out, _ in outs], [err for _, err in outs]


def _logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(ln)["step"] for ln in path.read_text().splitlines() if ln.endswith("}")]


def _deterministic(workdir):
    return [{k: r[k] for k in DETERMINISTIC} for r in map(json.loads, open(workdir / "metrics.jsonl"))]


def _signal_when(procs, ready, which, deadline_s=300):
    deadline = time.monotonic() + deadline_s
    while not ready() and all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.02)
    procs[which].send_signal(signal.SIGTERM)


def _stopped_at(outs):
    said = [ln for out in outs for ln in out.splitlines() if "stopped at step" in ln]
    assert len(said) == 1 and said[0] in outs[0], outs  # process 0 says it, once
    return int(said[0].split("stopped at step ")[1].split(";")[0])


def test_sigterm_to_one_process_stops_both_at_the_same_step_and_the_rerun_is_bit_identical(tmp_path):
    ref, victim = tmp_path / "ref", tmp_path / "victim"
    codes, _, errs = _finish(_start(ref, tmp_path / "jax_cache"))
    assert codes == [0, 0], errs[0][-3000:] + errs[1][-3000:]

    # While the run starts (process 0 holds the workdir's lock, nothing is compiled yet): held until the first
    # agreement step, step 2, where both processes save.
    procs = _start(victim, tmp_path / "jax_cache")
    _signal_when(procs, lambda: (victim / ".vlscale.lock").exists(), which=0)
    codes, outs, errs = _finish(procs)
    assert codes == [143, 143], errs[0][-3000:] + errs[1][-3000:]
    assert _stopped_at(outs) == 2 and (victim / "checkpoints" / "2").is_dir()

    # Mid-run, to process 1 only: process 0 hears of it at the next agreement step.
    procs = _start(victim, tmp_path / "jax_cache")
    _signal_when(procs, lambda: max(_logged_steps(victim), default=0) >= 4, which=1)
    codes, outs, errs = _finish(procs)
    assert codes == [143, 143], errs[0][-3000:] + errs[1][-3000:]
    stopped = _stopped_at(outs)
    assert stopped in (4, 6), outs  # the agreement steps after step 4 was logged, before the last
    assert (victim / "checkpoints" / str(stopped)).is_dir() and not (victim / "final.json").exists()
    assert not any("Traceback" in err for err in errs), errs

    codes, outs, errs = _finish(_start(victim, tmp_path / "jax_cache"))
    assert codes == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    assert f"resumed at step {stopped}/{STEPS}" in outs[0]
    final, reference = (json.loads((w / "final.json").read_text()) for w in (victim, ref))
    assert final == reference and final["step"] == STEPS
    assert _deterministic(victim) == _deterministic(ref)
