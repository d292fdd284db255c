"""Stopping several processes together without a barrier per step: the hosts agree only at agreement steps (every
``stop_check_every`` steps, and at log and checkpoint steps), counted here with a fake collective."""

import signal

import numpy as np
import pytest

from vlscale.errors import UserError
from vlscale.runtime import signals
from vlscale.train import loop, preemption


def _two_hosts(every: int):
    """Two StopAgreements joined by a fake collective that gathers both hosts' flags (``flags``, set by the test)."""
    hosts = {}
    flags = {h: False for h in (0, 1)}

    def gather_for(h):
        def gather(flag):
            assert bool(flag) == flags[h]
            return np.array([flags[0], flags[1]], np.int32)
        return gather

    for h in (0, 1):
        hosts[h] = preemption.StopAgreement(every, process_count=2, allgather=gather_for(h))
    return hosts, flags


def test_hosts_agree_only_every_n_steps_and_at_log_and_checkpoint_steps():
    log_every, ckpt_every, every, steps = 10, 25, 4, 50
    agreement = preemption.StopAgreement(every, process_count=2, allgather=lambda f: np.array([f, 0]))
    for step in range(1, steps + 1):
        synced = step % log_every == 0 or step % ckpt_every == 0
        assert not agreement.should_stop(False, step, synced=synced)
    # 16 collectives in 50 steps (the per-step barrier made 50).
    assert agreement.collectives == [4, 8, 10, 12, 16, 20, 24, 25, 28, 30, 32, 36, 40, 44, 48, 50]


def test_a_signal_on_one_host_stops_both_at_the_next_agreement_step():
    hosts, flags = _two_hosts(every=4)
    stopped = {}
    for step in range(1, 20):
        flags[1] = step >= 5  # SIGTERM reaches host 1 during step 5; host 0 never hears it
        for h in (0, 1):
            if h not in stopped and hosts[h].should_stop(flags[h], step, synced=step % 10 == 0):
                stopped[h] = step
    assert stopped == {0: 8, 1: 8}
    assert hosts[0].collectives == hosts[1].collectives == [4, 8]


def test_one_process_stops_at_the_next_step_without_a_collective():
    def never(flag):
        raise AssertionError("no collective with one process")

    agreement = preemption.StopAgreement(10, process_count=1, allgather=never)
    assert [agreement.should_stop(step >= 3, step, synced=False) for step in range(1, 6)] == [
        False, False, True, True, True]
    assert agreement.collectives == []


def test_stop_check_every_below_one_is_one_line():
    with pytest.raises(UserError, match=r"--config.stop_check_every=0: must be at least 1"):
        preemption.StopAgreement(0, process_count=2)


def _pretend_two_processes(monkeypatch, other_host_signalled_at: int | None):
    """The real loop with its StopAgreement told there are 2 processes; the other one's flag comes from a fake
    collective (set from ``other_host_signalled_at`` on). Returns the list the agreement will be put in."""
    made = []

    class TwoProcesses(preemption.StopAgreement):
        def __init__(self, every, process_count=None, allgather=None):
            super().__init__(every, process_count=2, allgather=self._gather)
            made.append(self)

        def _gather(self, flag):
            step = self.collectives[-1]
            other = other_host_signalled_at is not None and step >= other_host_signalled_at
            return np.array([int(flag), int(other)], np.int32)

    monkeypatch.setattr(preemption, "StopAgreement", TwoProcesses)
    return made


def test_the_training_loop_agrees_only_at_agreement_steps(tmp_path, make_config, monkeypatch):
    made = _pretend_two_processes(monkeypatch, None)
    cfg = make_config("tiny-clip", steps=12, log_every=5, checkpoint_every=6, stop_check_every=4, mesh__devices=1)
    final = loop.run(cfg, tmp_path / "w")
    assert final["step"] == 12
    # 6 collectives in 12 steps: 4, 8 (stop_check_every), 5, 10 (log), 6, 12 (checkpoint; 12 is also the last).
    assert made[0].collectives == [4, 5, 6, 8, 10, 12]


def test_the_training_loop_stops_when_another_process_was_signalled(tmp_path, make_config, monkeypatch):
    made = _pretend_two_processes(monkeypatch, 7)  # the other process heard SIGTERM during step 7
    cfg = make_config("tiny-clip", steps=12, log_every=5, checkpoint_every=6, stop_check_every=4, mesh__devices=1)
    with pytest.raises(signals.StopRequested) as stop:
        loop.run(cfg, tmp_path / "w")
    assert stop.value.signum == signal.SIGTERM and stop.value.exit_code == 143
    assert made[0].collectives == [4, 5, 6, 8]
    assert (tmp_path / "w" / "checkpoints" / "8").is_dir() and not (tmp_path / "w" / "final.json").exists()
