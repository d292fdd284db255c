"""Named evaluation suites (``configs/eval/<name>.py``), so a study scores every checkpoint the same way."""

from __future__ import annotations

from vlscale.errors import UserError

SUITES = ("synth", "paper")


def get_suite(name: str):
    """The suite's ConfigDict; ``name`` may carry an argument string (``paper:data_dir=/data/tfds``)."""
    from vlscale.configs.loading import load_config

    base = name.partition(":")[0]
    if base not in SUITES:
        raise UserError(f"--suite {name!r}: choose one of {', '.join(SUITES)}")
    return load_config(name, builtin="eval", what="eval suite")


def suite_tasks(name: str) -> list:
    from vlscale.eval.runner import as_task

    return [as_task(dict(t)) for t in get_suite(name).tasks]
