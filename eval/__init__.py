"""vlscale.eval: zero-shot classification, retrieval and MaMMUT generative scoring of checkpoints, written into the
results table the scaling-law fitter reads.

``evaluate_checkpoint(checkpoint, tasks, ...)`` and ``evaluate_run(workdir, suite, ...)`` are the entry points
(``vlscale.eval.runner``); they are imported lazily so ``vlscale --help`` does not load jax.
"""

from __future__ import annotations

__all__ = ["evaluate_checkpoint", "evaluate_run", "TaskSpec"]


def __getattr__(name):
    if name in __all__:
        from vlscale.eval import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'vlscale.eval' has no attribute {name!r}")
