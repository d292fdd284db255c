"""``vlscale train``: one run of the paper's recipe, configured by a ConfigDict file plus overrides."""

from __future__ import annotations

import argparse
import os

from vlscale.commands.argtypes import positive_int
from vlscale.commands import multihost

DESCRIPTION = """\
Train (or resume) one CLIP or MaMMUT run. The config argument picks the model and the data source; every other
field is set with --config.FIELD=VALUE (see configs/train.py for all fields and their defaults).

  vlscale train --config configs/train.py:model=tiny-mammut,data=synth --workdir runs/w \\
      --config.total_samples=20000 --config.global_batch_size=64

Re-running the same command resumes from the latest checkpoint; a finished run exits 0 and changes nothing.
SIGTERM/SIGINT save a checkpoint and exit 143/130 (resumable, not finished).
Writes WORKDIR/run.json, metrics.jsonl, tb/, checkpoints/N/ (Orbax) and final.json.
"""

DEFAULT_CONFIG = "configs/train.py"


def register(registry) -> None:
    registry.add("train", "Train or resume one CLIP / MaMMUT run (sharded, checkpointed, resumable).",
                 configure, handle, description=DESCRIPTION)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE[:ARG]",
                   help="config file and its argument, e.g. configs/train.py:model=tiny-clip,data=synth "
                        f"(default {DEFAULT_CONFIG})")
    p.add_argument("--workdir", help="run directory (local path or anything etils.epath reads, e.g. gs://)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="stop after this step (a clean boundary; the run stays resumable)")
    p.add_argument("--dry-run", action="store_true",
                   help="build the mesh, compile the step with the real shardings, print per-device memory and "
                        "FLOPs, then exit")
    p.add_argument("--dry-run-devices", type=positive_int, default=None, metavar="N",
                   help="with --dry-run: simulate N CPU devices (no accelerator needed)")
    multihost.add_flags(p)
    p.add_argument("--no-progress", action="store_true", help="plain log lines only")
    p.set_defaults(_config_overrides=True)


def build_config(spec: str, overrides):
    """The config file's ``get_config(arg)`` with the overrides applied: ``(FIELD, VALUE)`` pairs, or the
    ``--config.FIELD=VALUE`` arguments themselves."""
    from vlscale.configs.loading import apply_overrides, load_config, split_overrides

    if overrides and isinstance(overrides[0], str):
        _, overrides = split_overrides(overrides)
    return apply_overrides(load_config(spec), overrides)


def handle(args) -> int:
    from vlscale.errors import UserError

    if args.dry_run_devices and not args.dry_run:
        raise UserError("--dry-run-devices: only with --dry-run")
    if args.dry_run_devices:
        # Must be set before JAX starts: the dry run then sees N CPU devices whatever the machine has.
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={args.dry_run_devices}"])
        os.environ["JAX_PLATFORMS"] = "cpu"
    config = build_config(args.config, args.config_overrides)
    if not args.dry_run and not args.workdir:
        raise UserError("--workdir is required (where the run's checkpoints and metrics go)")
    multihost.initialize(args)
    if args.dry_run:
        from vlscale.train.dryrun import dry_run

        print(dry_run(config))
        return 0
    from vlscale.eval.in_training import evaluator
    from vlscale.train.loop import run

    result = run(config, args.workdir, steps=args.steps, progress=not args.no_progress, evaluate=evaluator(config))
    if not result.get("finished", True):
        print(f"vlscale train: stopped at step {result['step']} (--steps); re-run without --steps to continue")
    return 0
