"""Class names and prompt templates: the shipped sets (ImageNet-1k, the synthetic tasks) and user files.

Templates carry a ``{c}`` placeholder (CLIP_benchmark's convention); ``{}`` (``str.format``'s
convention) is accepted too. Filling is a plain substitution, so a class name or template
with other braces is never misread as a format field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vlscale.errors import UserError

ASSETS = "assets"
IMAGENET_CLASSNAMES_FILE = "imagenet1k_classnames.txt"
IMAGENET_WNIDS_FILE = "imagenet1k_wnids.txt"
OPENAI_TEMPLATES_FILE = "openai_imagenet_templates.txt"
PLACEHOLDERS = ("{c}", "{}")
# The paper's ImageNet-style benchmarks share ImageNet-1k's 1000 classes; imagenet-a and imagenet-r use 200 of them
# (``IMAGENET_SUBSETS``: the shipped files of their ImageNet-1k label indices, ascending).
IMAGENET_LIKE = ("imagenet1k", "imagenetv2", "imagenet_sketch")
IMAGENET_SUBSETS = {"imagenet-a": "imagenet_a_indices.txt", "imagenet-r": "imagenet_r_indices.txt"}


@dataclass(frozen=True)
class Prompts:
    """Class names (label order) and templates of one classification task."""

    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    source: str = ""  # where they came from, for error messages

    def texts(self) -> list[str]:
        """All prompts, class-major: the prompts of class 0 (one per template), then class 1, ..."""
        return [fill(t, c) for c in self.classnames for t in self.templates]


def fill(template: str, classname: str) -> str:
    for p in PLACEHOLDERS:
        if p in template:
            return template.replace(p, classname)
    raise UserError(f"template {template!r} has no {{c}} placeholder for the class name")


def _asset_lines(name: str) -> list[str]:
    text = resources.files("vlscale.eval").joinpath(ASSETS, name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def imagenet_classnames() -> list[str]:
    """The 1000 ImageNet-1k class names of OpenAI's CLIP notebook, in label (WordNet id) order."""
    return _asset_lines(IMAGENET_CLASSNAMES_FILE)


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in label order (sorted, as every ImageNet tool numbers them)."""
    return _asset_lines(IMAGENET_WNIDS_FILE)


def imagenet_subset_indices(name: str) -> list[int]:
    """The ImageNet-1k label indices (ascending) of the classes of ``imagenet-a`` or ``imagenet-r``: label k of
    the 200-class benchmark is ImageNet-1k class ``indices[k]``."""
    if name not in IMAGENET_SUBSETS:
        raise UserError(f"no shipped ImageNet class subset {name!r}; choose one of {', '.join(IMAGENET_SUBSETS)}")
    return [int(x) for x in _asset_lines(IMAGENET_SUBSETS[name])]


def imagenet_subset_classnames(name: str) -> list[str]:
    """The 200 class names of ``imagenet-a`` / ``imagenet-r``: the ImageNet-1k names at the subset's indices."""
    names = imagenet_classnames()
    return [names[i] for i in imagenet_subset_indices(name)]


def openai_templates() -> list[str]:
    """OpenAI's 80 ImageNet prompt templates (``{c}`` placeholder)."""
    return _asset_lines(OPENAI_TEMPLATES_FILE)


def synth_prompts(task: str, synth_config=None) -> Prompts:
    """Class names and templates of a synthetic task for a run's config
    (``vlscale.data.synth_eval_sets.task_classnames``, which reads the shipped files)."""
    from vlscale.data import synth_eval_sets, synth_scene

    names = synth_eval_sets.task_classnames(synth_config or synth_scene.SynthConfig())
    if task not in names:
        raise UserError(f"unknown synthetic task {task!r}; choose one of {', '.join(names)} or retrieval")
    classnames, templates = names[task]
    return Prompts(tuple(classnames), tuple(templates), source=f"synth:{task}")


def read_list_file(path: str | Path, what: str, flag: str) -> tuple[list[str], str | None]:
    """(entries, task name or None) of plain text (one entry per line, blank lines ignored) or JSON: a list, or
    ``{"task": NAME, "classnames"|"templates": [...]}`` (the task name lets mismatched pairs be caught)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{flag} {p}: {what} file does not exist")
    text = p.read_text(encoding="utf-8", errors="replace")
    task = None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise UserError(f"{flag} {p}: not valid JSON ({e})") from None
        if isinstance(data, dict):
            task = data.get("task")
            data = data.get(what)
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise UserError(f"{flag} {p}: expected a JSON list of strings (or {{\"{what}\": [...]}})")
        items = [x.strip() for x in data if x.strip()]
    else:
        items = [line.strip() for line in text.splitlines() if line.strip()]
    if not items:
        raise UserError(f"{flag} {p}: holds no {what}")
    return items, (str(task) if task is not None else None)


def read_classnames(path: str | Path) -> tuple[list[str], str | None]:
    # A name may repeat (OpenAI's ImageNet list has "missile" and "sunglasses" twice): labels are positions.
    # Only matching folders by name needs unique names (``file_sets.folder_dataset`` checks that).
    return read_list_file(path, "classnames", "--classnames")


def read_templates(path: str | Path) -> tuple[list[str], str | None]:
    templates, task = read_list_file(path, "templates", "--templates")
    bad = [t for t in templates if not any(p in t for p in PLACEHOLDERS)]
    if bad:
        raise UserError(f"--templates {path}: template {bad[0]!r} has no {{c}} placeholder for the class name")
    return templates, task


def user_prompts(default: Prompts | None, classnames_file=None, templates_file=None) -> Prompts:
    """The dataset's own prompts with ``--classnames`` / ``--templates`` files taking their place."""
    names = list(default.classnames) if default else None
    templates = list(default.templates) if default else None
    names_task = templates_task = None
    if classnames_file:
        names, names_task = read_classnames(classnames_file)
    if templates_file:
        templates, templates_task = read_templates(templates_file)
    if names_task and templates_task and names_task != templates_task:
        raise UserError(f"--classnames {classnames_file} is for task {names_task!r} but --templates "
                        f"{templates_file} is for task {templates_task!r}; pass files of the same task")
    if names is None:
        raise UserError("this dataset has no class names of its own: pass --classnames FILE")
    if templates is None:
        templates = openai_templates()
    source = str(classnames_file) if classnames_file else (default.source if default else "")
    return Prompts(tuple(names), tuple(templates), source=source)


def check_matching(prompts: Prompts, num_classes: int | None, labels_seen: int | None = None) -> None:
    """Class names must cover the dataset's labels: a mismatch means names and data come from different tasks."""
    n = len(prompts.classnames)
    if num_classes is not None and n != num_classes:
        raise UserError(f"{n} class names ({prompts.source or 'given'}) but the dataset has {num_classes} classes; "
                        "class names and data belong to different tasks")
    if labels_seen is not None and labels_seen >= n:
        raise UserError(f"the dataset has label {labels_seen} but only {n} class names ({prompts.source or 'given'}); "
                        "class names and data belong to different tasks")
