"""Ctrl-C / SIGTERM: every command ends with exit 130 / 143, one line, no traceback, no crash, no partial output.

The subprocess tests interrupt a real `vlscale compare --bootstrap 1000` at several moments (loading, main fit,
bootstrap, the end where results are printed and saved); the in-process tests pin the pieces (`vlscale.runtime.signals`,
an interrupt while a set of outputs is being written).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from vlscale.runtime import signals
from vlscale.runtime.files import atomic_output_dir

ENV = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg", XLA_FLAGS="")


def _interrupt(cmd, when: str, sig: int, delay: float = 0.0, timeout: float = 240):
    """Runs ``cmd``, sends ``sig`` ``delay`` s after a stderr line containing ``when``; (rc, stdout, stderr,
    seconds from the signal to the exit)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    err, sent = [], None
    try:
        for line in p.stderr:
            err.append(line)
            if sent is None and when in line:
                time.sleep(delay)
                p.send_signal(sig)
                sent = time.monotonic()
        rc = p.wait(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
    assert sent is not None, "".join(err)
    return rc, p.stdout.read(), "".join(err), time.monotonic() - sent


MOMENTS = [
    # (stderr text that marks the moment, delay, signal)
    ("read ", 0.0, signal.SIGINT),  # table loaded, fitting not started (jax importing)
    ("fitting saturation_both", 0.5, signal.SIGTERM),  # main fit compiling / running
    ("refitting 1000 bootstrap", 0.5, signal.SIGINT),  # the bootstrap phase (was a segfault half the time)
    ("frontier points fitted", 0.0, signal.SIGINT),  # intervals and comparisons being computed
    ("writing ", 0.0, signal.SIGTERM),  # fit.json/csv/tex written, the figure being drawn
    ("writing ", 0.6, signal.SIGINT),
]


@pytest.mark.slow
@pytest.mark.parametrize("when,delay,sig", MOMENTS, ids=[f"{m[0].split()[0]}-{m[1]}-{m[2].name}" for m in MOMENTS])
def test_compare_interrupted_exits_cleanly(when, delay, sig, tmp_path, shared_data):
    out = tmp_path / "out"
    _previous_run(out)  # an earlier run's set: an interrupted run must leave it exactly as it was
    before = {p.name: p.read_text() for p in out.iterdir()}
    cmd = [sys.executable, "-m", "vlscale", "compare", str(shared_data / "laion_scaling_results.csv"),
           "--benchmark", "imagenet1k", "--bootstrap", "1000", "--out", str(out)]
    rc, stdout, stderr, after = _interrupt(cmd, when, sig, delay)
    if rc == 0:  # the signal came after the last write: the run is complete and says so
        assert "wrote " in stdout and (out / "fit.json").is_file()
        return
    assert rc == signals.exit_code(sig), stderr  # never -11 (segfault) or a Python crash
    last = stderr.strip().splitlines()[-1]
    assert last == f"vlscale compare: interrupted by {sig.name}", stderr
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr
    assert "wrote " not in stdout
    assert {p.name: p.read_text() for p in out.iterdir()} == before, "an interrupted run changed --out"
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "temporary files left behind"
    assert after < signals.CLI_FORCE_AFTER_S + 5


@pytest.mark.slow
def test_fit_interrupted_in_the_bootstrap_exits_cleanly(tmp_path, shared_data):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vlscale", "fit", str(shared_data / "laion_scaling_results.csv"), "--benchmark",
           "imagenet1k", "--pretrain-dataset", "datacomp_1b", "--lr-scheduler", "cosine",
           "--bootstrap", "1000", "--out", str(out)]
    rc, stdout, stderr, _ = _interrupt(cmd, "refitting 1000 bootstrap", signal.SIGINT, 0.3)
    assert rc == 130, stderr
    assert stderr.strip().splitlines()[-1] == "vlscale fit: interrupted by SIGINT"
    assert "Traceback" not in stderr and not out.exists() and [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.slow
def test_stuck_in_one_compiled_call_is_ended_after_force_after(tmp_path):
    """A main thread busy inside one long XLA call cannot run Python's handler; the watchdog ends the process."""
    script = textwrap.dedent("""
        import sys, jax, jax.numpy as jnp
        from vlscale.runtime import signals
        # A data-dependent loop with a run-time trip count: XLA can neither fold nor shorten it (minutes).
        spin = jax.jit(lambda x, n: jax.lax.fori_loop(0, n, lambda i, v: jnp.sin(v) + 1e-3, x))
        spin(jnp.float32(1.0), jnp.int32(1)).block_until_ready()  # compiled
        with signals.stop_on_signals(force_after=1.0):
            print("computing", file=sys.stderr, flush=True)
            spin(jnp.float32(1.0), jnp.int32(2_000_000_000)).block_until_ready()
        print("finished", file=sys.stderr)
    """)
    rc, _, stderr, after = _interrupt([sys.executable, "-c", script], "computing", signal.SIGTERM, delay=0.3,
                                      timeout=60)
    assert rc == 143, stderr
    assert "still busy after SIGTERM" in stderr and "finished" not in stderr
    assert after < 10


def test_signal_becomes_stop_requested_with_the_exit_code():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(signals.StopRequested) as info:
        with signals.stop_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted at once
    assert info.value.exit_code == 143 and info.value.signum == signal.SIGTERM
    assert isinstance(info.value, KeyboardInterrupt)  # `except Exception` does not swallow it
    assert signal.getsignal(signal.SIGTERM) is before


class _SignalsItselfWhenCollected:
    """Like JAX's gc callback that CI once caught the SIGINT in: Python swallows what is raised in ``__del__``."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)  # the handler runs here, inside __del__


def test_a_stop_swallowed_in_a_finalizer_is_delivered_again():
    reached = []
    with pytest.raises(signals.StopRequested) as info:
        with signals.stop_on_signals() as stop:
            obj = _SignalsItselfWhenCollected()
            del obj  # "Exception ignored in ... __del__": the first StopRequested is lost
            reached.append("after the finalizer")
            for _ in range(500):  # the watchdog raises it again in the main thread
                time.sleep(0.01)
            reached.append("never")
    assert reached == ["after the finalizer"]
    assert stop.swallowed == 1 and stop.delivered == 2 and info.value.exit_code == 130


def test_outputs_are_not_published_after_a_swallowed_stop(tmp_path):
    out = tmp_path / "out"
    _previous_run(out)
    with signals.stop_on_signals() as stop:
        stop.signum, stop.delivered, stop.swallowed = signal.SIGTERM, 1, 1  # as if the watchdog had not run yet
        with pytest.raises(signals.StopRequested):
            with atomic_output_dir(out, owned=("fit.*",)) as tmp:
                (tmp / "fit.json").write_text("new")
        assert not stop.undelivered  # delivered now: the study's bookkeeping on the way out may write
        from vlscale.runtime.files import atomic_write_text
        atomic_write_text(tmp_path / "state.json", "{}")
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        n: f"old {n}" for n in ("fit.json", "fit.csv", "fit.png", "notes.txt")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "state.json"]


def test_poll_mode_sets_a_flag_and_a_second_signal_raises():
    with signals.stop_on_signals(raise_on_signal=False) as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.requested and stop.exit_code == 130
        with pytest.raises(signals.StopRequested):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    with pytest.raises(signals.StopRequested) as info:
        stop.raise_if_requested()
    assert info.value.exit_code == 130


def test_a_signal_heard_by_an_enclosing_block_counts_as_the_first():
    with signals.stop_on_signals(raise_on_signal=False) as outer:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        with signals.stop_on_signals(raise_on_signal=False, heard_before=outer) as inner:
            assert inner.requested and inner.exit_code == 143
            with pytest.raises(signals.StopRequested) as info:  # the next one: the user insists
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
    assert info.value.exit_code == 143


def test_previous_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT)
    with signals.stop_on_signals():
        with signals.stop_on_signals(raise_on_signal=False):
            pass
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


def test_deferred_delivers_the_signal_after_the_block():
    done = []
    with pytest.raises(signals.StopRequested):
        with signals.stop_on_signals():
            with signals.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                done.append("block finished")
            time.sleep(5)
    assert done == ["block finished"]


def _previous_run(out):
    out.mkdir()
    for name in ("fit.json", "fit.csv", "fit.png", "notes.txt"):
        (out / name).write_text(f"old {name}")


def test_interrupt_while_saving_leaves_the_previous_set(tmp_path):
    out = tmp_path / "out"
    _previous_run(out)
    with pytest.raises(signals.StopRequested):
        with atomic_output_dir(out, owned=("fit.*",)) as tmp:
            (tmp / "fit.json").write_text("new")
            (tmp / "fit.csv").write_text("new")
            raise signals.StopRequested(signal.SIGINT)  # e.g. Ctrl-C while the figure renders
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        n: f"old {n}" for n in ("fit.json", "fit.csv", "fit.png", "notes.txt")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_finished_set_replaces_the_old_one_and_keeps_other_files(tmp_path):
    out = tmp_path / "out"
    _previous_run(out)
    with atomic_output_dir(out, owned=("fit.*",)) as tmp:
        (tmp / "fit.json").write_text("new")
        (tmp / "fit.csv").write_text("new")
    # fit.png belonged to the previous run's set: gone, not left beside the new one; notes.txt is the user's.
    assert {p.name: p.read_text() for p in out.iterdir()} == {"fit.json": "new", "fit.csv": "new",
                                                               "notes.txt": "old notes.txt"}
