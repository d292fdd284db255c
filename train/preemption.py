"""When the hosts of a multi-process run stop together, without a barrier at every step.

A SIGTERM (a preemption notice) or Ctrl-C may reach any one host; all of them must stop after the same step and
save it. Agreeing takes a collective whose answer the host reads, which makes the host wait for the step in
flight: done at every step, step N+1 could not be dispatched before step N finished. So the hosts agree only at
*agreement steps*: every ``stop_check_every`` steps, and at the steps where the loop already waits for the device
anyway (log and checkpoint steps). Each host derives them from the step number and the config alone, so all of
them enter the collective together and read the same answer. Between agreement steps a signal only sets the
local flag; the stop comes at the next agreement step, at most ``stop_check_every`` steps later.

One process needs no agreement: its own flag is the answer at every step, as before.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from vlscale.errors import UserError


def is_agreement_step(step: int, every: int, *, synced: bool) -> bool:
    """Whether the hosts agree on stopping after ``step``: every ``every`` steps, and at ``synced`` steps (log and
    checkpoint steps, where the host already waited for the step to finish)."""
    return synced or step % every == 0


def _process_allgather(flag):
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(flag)


class StopAgreement:
    """``should_stop(local, step, synced)``: whether this host stops after ``step`` — the same answer on every host.

    ``allgather`` gathers one int32 per process (``multihost_utils.process_allgather``; tests pass a fake);
    ``collectives`` lists the steps at which it ran.
    """

    def __init__(self, every: int, process_count: int | None = None,
                 allgather: Callable[[np.ndarray], np.ndarray] | None = None):
        if int(every) < 1:
            raise UserError(f"--config.stop_check_every={every}: must be at least 1")
        if process_count is None:
            import jax

            process_count = jax.process_count()
        self.every = int(every)
        self.process_count = int(process_count)
        self._allgather = allgather or _process_allgather
        self.collectives: list[int] = []

    def should_stop(self, local: bool, step: int, *, synced: bool) -> bool:
        if self.process_count == 1:
            return bool(local)
        if not is_agreement_step(step, self.every, synced=synced):
            return False
        self.collectives.append(int(step))
        return bool(np.any(self._allgather(np.int32(bool(local)))))
