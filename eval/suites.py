"""Named evaluation suites (``configs/eval/<name>.py``), so a study scores every checkpoint the same way."""

from __future__ import annotations

import importlib

from vlscale.errors import UserError

SUITES = ("synth", "paper")


def get_suite(name: str):
    """The suite's ConfigDict; ``name`` may carry an argument string (``paper:data_dir=/data/tfds``)."""
    base, _, arg = name.partition(":")
    if base not in SUITES:
        raise UserError(f"--suite {name!r}: choose one of {', '.join(SUITES)}")
    module = importlib.import_module(f"vlscale.configs.eval.{base}")
    return module.get_config(arg or None)


def suite_tasks(name: str) -> list:
    from vlscale.eval.runner import as_task

    return [as_task(dict(t)) for t in get_suite(name).tasks]
