"""Multi-host through JAX's own multi-controller runtime (``jax.distributed``); no launcher of our own.

On TPU pods and under SLURM ``jax.distributed.initialize()`` finds the coordinator, the process count and this
process's index by itself; anywhere else pass them (``--coordinator-address HOST:PORT --num-processes N
--process-id I``). Every process then runs the same program on its own devices; the mesh spans all of them.
"""

from __future__ import annotations

import os

from vlscale.errors import UserError


def cluster_detected() -> str | None:
    """'slurm' / 'tpu' when this process is one of several started by such a cluster, else None."""
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in os.environ:
        return "slurm"
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    return None


# (this process's index, the process count) once ``initialize`` started the runtime; what crash reports print.
_STARTED: dict = {}


def process_info() -> tuple[int, int]:
    """(process index, process count) of a started multi-controller runtime, else (0, 1); never starts JAX."""
    return int(_STARTED.get("index", 0)), int(_STARTED.get("count", 1))


def _leave_sigterm_to_vlscale(jax) -> None:
    """JAX's preemption service installs a C SIGTERM handler that replaces Python's, so a SIGTERM that came before
    the next ``signal.signal`` was swallowed (a run told to stop during start-up trained on to the end).
    vlscale.runtime.signals handles SIGTERM itself, and the trainer agrees on stops over hosts."""
    jax.config.update("jax_enable_preemption_service", False)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> int:
    """Starts the multi-controller runtime when asked or detected; returns the process count."""
    import jax

    explicit = [coordinator_address, num_processes, process_id]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise UserError("multi-host: give all of --coordinator-address, --num-processes and --process-id")
        if not 0 <= int(process_id) < int(num_processes):
            raise UserError(f"--process-id {process_id}: must be in [0, {num_processes})")
        if os.environ.get("JAX_PLATFORMS", "") == "cpu":
            # CPU devices of several processes talk through gloo (tests, CPU clusters); asking the backend
            # here would start it before the runtime, so only the environment is read.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        _leave_sigterm_to_vlscale(jax)
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=int(num_processes),
                                   process_id=int(process_id))
    elif cluster_detected():
        _leave_sigterm_to_vlscale(jax)
        jax.distributed.initialize()
    else:
        return jax.process_count()
    _STARTED.update(index=jax.process_index(), count=jax.process_count())
    return _STARTED["count"]
