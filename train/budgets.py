"""Samples-seen budgets as optimizer steps: the one rule the trainer and the study planner share.

A budget of ``samples`` at global batch ``B`` is reached after ``ceil(samples / B)`` steps (the last step may
overshoot it by less than a batch). The trainer keeps its milestone checkpoints at these steps and the planner
starts cooldowns from them, so a cooldown's ``init_from`` step is always one the trainer kept. Pure: no JAX.
"""

from __future__ import annotations

import math
from typing import Iterable


def budget_step(samples: int, global_batch_size: int) -> int:
    """The step at which ``samples`` samples have been seen (ceil; at least one step for a positive budget)."""
    samples, bs = int(samples), int(global_batch_size)
    if bs < 1:
        raise ValueError(f"global batch size {bs} must be at least 1")
    return math.ceil(samples / bs)


def milestone_steps(budgets: Iterable[int], global_batch_size: int) -> list[int]:
    """The sorted, distinct steps of the given budgets (the steps a const run keeps forever)."""
    return sorted({budget_step(b, global_batch_size) for b in budgets})
