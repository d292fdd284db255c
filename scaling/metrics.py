"""Which metrics the fitter understands, and how each becomes the error rate a scaling law fits.

A metric is ``accuracy``-like (a score in [0, 1], higher is better: error = 1 - value), ``loss``-like (lower is
better, any scale >= 0: error = value) or a ``score`` a user declares with its own error transform (e.g. CIDEr,
which is not a fraction). The registry holds every name our evaluator writes and the paper's tables use; a name
it does not hold is inferred from unambiguous words in it (``..._loss``, ``..._acc...``, ``...recall...``), and
anything else is unknown. An unknown metric does not invalidate a table: it is an error only when a fit selects
it, and the message says how to declare it (``register_metric``).

Only the standard library and numpy: the CLI imports this for validation without JAX.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np

from vlscale.errors import UserError

KINDS = ("accuracy", "loss", "score")


@dataclasses.dataclass(frozen=True)
class Metric:
    """``error(values)`` is what the law is fitted to; ``value_range`` is checked when a table is validated."""

    name: str
    kind: str
    error: Callable[[np.ndarray], np.ndarray]
    value_range: tuple[float, float]

    @property
    def error_range(self) -> tuple[float, float]:
        """Where predicted errors (and their intervals) can lie: [0, 1] for accuracies, [0, inf) otherwise."""
        return (0.0, 1.0) if self.kind == "accuracy" else (0.0, float("inf"))


def _one_minus(v):
    return 1.0 - np.asarray(v, dtype=np.float64)


def _identity(v):
    return np.asarray(v, dtype=np.float64)


_REGISTRY: dict[str, Metric] = {}

# Names written by our evaluator (vlscale.eval) and found in the paper's tables. Synthetic tasks (synth_colour,
# synth_retrieval, ...) are downstream datasets that report these same metric names.
BUILTIN_ACCURACY = (
    "acc1", "acc5", "mean_per_class_recall", "miou",
    "image_retrieval_recall@1", "image_retrieval_recall@5", "image_retrieval_recall@10",
    "text_retrieval_recall@1", "text_retrieval_recall@5", "text_retrieval_recall@10",
    "generative_acc1", "generative_mean_acc1", "generative_acc5",
)
BUILTIN_LOSS = ("caption_loss", "contrastive_loss", "loss")

# Inference for unregistered names: whole words only, losses first (``acc_loss`` is a loss).
_LOSS_WORDS = re.compile(r"(^|[_@\-.])(loss|nll|perplexity|error|err)($|[_@\-.\d])", re.IGNORECASE)
_ACCURACY_WORDS = re.compile(r"(^|[_@\-.])(acc\d*|accuracy|recall|precision|iou|miou|map|f1|auc)($|[_@\-.\d])",
                             re.IGNORECASE)


def register_metric(name: str, kind: str, *, error: Callable | None = None,
                    value_range: tuple[float, float] | None = None) -> Metric:
    """Declares a metric: ``kind`` "accuracy" (error = 1 - value, values in [0, 1]), "loss" (error = value) or
    "score" (give ``error``, a vectorised transform to an error > 0, e.g. ``lambda v: 1 / v``)."""
    if kind not in KINDS:
        raise UserError(f"metric kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "score" and error is None:
        raise UserError(f"metric {name!r} of kind 'score' needs error=..., a transform from value to error > 0")
    default_error = {"accuracy": _one_minus, "loss": _identity}.get(kind)
    rng = value_range or ((0.0, 1.0) if kind == "accuracy" else (-np.inf, np.inf))
    m = Metric(name, kind, error or default_error, (float(rng[0]), float(rng[1])))
    _REGISTRY[name] = m
    return m


def unregister_metric(name: str) -> None:
    _REGISTRY.pop(name, None)


for _n in BUILTIN_ACCURACY:
    register_metric(_n, "accuracy")
for _n in BUILTIN_LOSS:
    register_metric(_n, "loss")


def lookup(name: str) -> Metric | None:
    """The registered (or unambiguously inferred) metric, or None when the name says nothing."""
    m = _REGISTRY.get(name)
    if m is not None:
        return m
    if _LOSS_WORDS.search(name):
        return Metric(name, "loss", _identity, (-np.inf, np.inf))
    if _ACCURACY_WORDS.search(name):
        return Metric(name, "accuracy", _one_minus, (0.0, 1.0))
    return None


def get_metric(name: str) -> Metric:
    m = lookup(name)
    if m is None:
        raise UserError(
            f"metric {name!r} is unknown: declare it before fitting, e.g. "
            f"vlscale.scaling.metrics.register_metric({name!r}, 'accuracy'|'loss'|'score', error=...) or "
            f"--metric-kind {name}:accuracy|loss"
        )
    return m


def metric_kind(name: str) -> str:
    return get_metric(name).kind


def parse_metric_kinds(text: str | None) -> dict[str, str]:
    """``"cider:loss,bleu:accuracy"`` -> {name: kind} (the CLI's --metric-kind)."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, _, kind = item.strip().rpartition(":")
        if not name or kind not in ("accuracy", "loss"):
            raise UserError(f"--metric-kind {item!r}: write NAME:accuracy or NAME:loss")
        out[name] = kind
    return out
