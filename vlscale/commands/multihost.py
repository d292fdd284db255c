"""The multi-host flags every command that runs on a mesh takes (train, eval, caption), and starting the runtime.

On TPU pods and under SLURM ``jax.distributed`` finds its peers by itself; elsewhere the three flags name them.
Only argparse-level code at import time.
"""

from __future__ import annotations

import argparse


def add_flags(p: argparse.ArgumentParser) -> None:
    from vlscale.commands.argtypes import nonnegative_int, positive_int

    p.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                   help="multi-host: the coordinator (process 0); auto-detected on TPU pods and under SLURM")
    p.add_argument("--num-processes", type=positive_int, default=None, help="multi-host: number of processes")
    p.add_argument("--process-id", type=nonnegative_int, default=None, help="multi-host: this process's index")


def initialize(args) -> int:
    """Starts jax.distributed when the flags ask for it or a cluster is detected; returns the process count."""
    from vlscale.runtime import distributed

    return distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
