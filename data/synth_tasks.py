"""The synthetic zero-shot tasks' shipped class names and prompt templates.

``data/assets/synth_<task>_classnames.txt`` lists the generator's whole vocabulary for a task in its order (the
colours, the shapes, counts 1..9, colour x shape pairs colour-major) and ``synth_<task>_templates.txt`` its prompt
templates (``{c}`` = class name). A run's config picks its subset
(``vlscale.data.synth_eval_sets.task_classnames``); the evaluator reads them through ``vlscale.eval.prompts``.
"""

from __future__ import annotations

from importlib import resources

from vlscale.errors import UserError

ZEROSHOT_TASKS = ("colour", "shape", "count", "colour_shape")
CLASSNAMES_FILE = "synth_{task}_classnames.txt"
TEMPLATES_FILE = "synth_{task}_templates.txt"


def _asset_lines(name: str) -> list[str]:
    text = resources.files("vlscale.data").joinpath("assets", name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def task_lists(task: str) -> tuple[list[str], tuple[str, ...]]:
    """The shipped class names (the generator's whole vocabulary, in its order) and templates of a synthetic task."""
    if task not in ZEROSHOT_TASKS:
        raise UserError(f"unknown synthetic task {task!r}; choose one of {', '.join(ZEROSHOT_TASKS)} or retrieval")
    return _asset_lines(CLASSNAMES_FILE.format(task=task)), tuple(_asset_lines(TEMPLATES_FILE.format(task=task)))
