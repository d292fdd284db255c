"""The options every fit and comparison takes, in one dataclass, and the paper's defaults.

``fit``, ``compare`` and ``compare_benchmarks`` (``scaling.api``) all build an ``Options`` from their keyword
arguments (``Options.build``), so a keyword means the same everywhere and is checked in one place. Standard
library only: the CLI reads the defaults for ``--help`` without importing numpy or JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

# The paper's extrapolation targets (Nezhurina et al. 2025, Tab. 2): openCLIP/openMaMMUT ViT-L/14 at 12.8B samples.
PAPER_PREDICT_AT = (2.14e12, 2.59e12)
# The paper fits up to 1e12 GFLOPs and predicts beyond (scripts/fig1.sh LARGE_FLOPS_MAPPING).
PAPER_FIT_MAX_COMPUTE = 1e12
# Benchmarks of the paper's main comparison (Fig. 1-3): ImageNet-1k zero-shot and MS-COCO retrieval in both directions.
PAPER_BENCHMARKS = (
    ("imagenet1k", "acc1"),
    ("mscoco_captions", "image_retrieval_recall@5"),
    ("mscoco_captions", "text_retrieval_recall@5"),
)
PAPER_PRETRAIN_DATASETS = ("datacomp_1b", "relaion2b-en")
# Paper settings (scripts/fig1.sh): samples seen up to 1e10, compute from 1e6 GFLOPs.
PAPER_MAX_SAMPLES_SEEN = 1e10
PAPER_MIN_COMPUTE = 1e6

DEFAULT_LEVEL = 0.95
DEFAULT_BOOTSTRAP = 1000
GROUP_BY = ("model_type", "pretrain_dataset", "model")
FRONTIER_METHODS = ("bins", "naive", "hull")
# "fit": the fitted frontier is built from runs <= fit_max_compute only (a clean extrapolation test);
# "all": from every run, as the paper does (its bin edges then depend on the held-out runs).
FRONTIER_SCOPES = ("fit", "all")
# "seeds": one start plus the fitter's variable-projection seeds (an exhaustive scan of the nonlinear parameters);
# "paper": the paper's 3200-start grid as well.
STARTS = ("seeds", "paper")
LOSSES = ("mse", "huber")
# Near-optimal solutions (conditioning): objective within this relative distance of the best.
DEFAULT_TOLERANCE = 0.05
# Below this absolute difference in predicted error (0.1 pp for accuracies; for losses 0.1 % of the prediction)
# two curves are reported as "no difference".
DEFAULT_MIN_DIFFERENCE = 1e-3
# More than this share of bootstrap refits ending with a non-finite objective is an error, not a narrower band.
MAX_FAILED_REFITS = 0.05
AUTO_FORM = "auto"


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything a fit or comparison can be told. ``None`` in a selection field means "no filter"."""

    # selection
    benchmark: str | None = None
    metric: str | None = None
    pretrain_dataset: str | None = None
    lr_scheduler: str | None = None
    model_types: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None
    group_by: str = "model_type"
    x: str | None = None
    min_compute: float | None = None
    max_compute: float | None = None
    max_samples_seen: float | None = None
    # several selections (compare_benchmarks)
    benchmarks: tuple = PAPER_BENCHMARKS
    pretrain_datasets: tuple = ("datacomp_1b",)
    # fit
    form: str = "saturation_both"
    frontier: str = "bins"
    frontier_scope: str = "fit"
    fit_max_compute: float | Mapping[str, float] | None = None
    predict: tuple[float, ...] = ()
    bootstrap: int = DEFAULT_BOOTSTRAP
    level: float = DEFAULT_LEVEL
    loss: str = "mse"
    seed: int = 0
    leave_one_out: bool = True
    starts: str = "seeds"
    tolerance: float = DEFAULT_TOLERANCE
    min_difference: float = DEFAULT_MIN_DIFFERENCE
    max_failed_refits: float = MAX_FAILED_REFITS
    progress: Callable[[str], None] | None = None

    @classmethod
    def build(cls, defaults: Mapping | None = None, **kwargs) -> "Options":
        """Options from keyword arguments over ``defaults``; ``at`` is another name for ``predict``."""
        if "at" in kwargs:
            kwargs["predict"] = kwargs.pop("at")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; options are: {', '.join(sorted(names))}")
        merged = {**(defaults or {}), **kwargs}
        for key in ("model_types", "models", "groups"):
            v = merged.get(key)
            if v is not None:
                merged[key] = tuple(v.split(",")) if isinstance(v, str) else tuple(v)
        for key in ("benchmarks", "pretrain_datasets"):
            if key in merged and merged[key] is not None:
                merged[key] = tuple(merged[key])
        opts = cls(**merged)
        opts.check()
        return opts

    def replace(self, **changes) -> "Options":
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        """One-line errors for values no fit can use."""
        from vlscale.scaling.results import ResultsError  # results imports pandas: only when checking

        if not (0.0 < self.level < 1.0):
            raise ResultsError(f"interval level {self.level} must be in (0, 1), e.g. 0.95")
        if self.bootstrap < 0 or (0 < self.bootstrap < 20):
            raise ResultsError(f"--bootstrap {self.bootstrap}: use 0 (delta-method intervals) or at least 20 resamples")
        for value, choices, what in ((self.group_by, GROUP_BY, "group by"),
                                     (self.frontier, FRONTIER_METHODS, "frontier method"),
                                     (self.frontier_scope, FRONTIER_SCOPES, "frontier scope"),
                                     (self.starts, STARTS, "--starts"), (self.loss, LOSSES, "loss")):
            if value not in choices:
                raise ResultsError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
        if not (0.0 <= self.tolerance < 10.0):
            raise ResultsError(f"conditioning tolerance {self.tolerance} must be >= 0 (relative, e.g. 0.05)")
        if not self.min_difference >= 0:  # NaN too
            raise ResultsError(f"minimum difference {self.min_difference} must be >= 0")


# fit(): no filters beyond what the caller names.
FIT_DEFAULTS: dict = {}
# compare() / compare_benchmarks(): the paper's comparison.
COMPARE_DEFAULTS: dict = dict(groups=("clip", "mammut"), benchmark="imagenet1k", pretrain_dataset="datacomp_1b",
                              lr_scheduler="cosine", min_compute=PAPER_MIN_COMPUTE,
                              max_samples_seen=PAPER_MAX_SAMPLES_SEEN, predict=PAPER_PREDICT_AT)


def pair(groups: Sequence[str] | None) -> tuple[str, str] | None:
    """The two groups a comparison is about; an error unless there are exactly two different ones."""
    from vlscale.scaling.results import ResultsError

    if groups is None:
        return None
    groups = [g for g in (groups.split(",") if isinstance(groups, str) else groups) if g]
    if len(groups) != 2:
        raise ResultsError(f"compare needs exactly two groups, got {len(groups)} ({', '.join(groups)}); "
                           "pass e.g. --model-types clip,mammut")
    if groups[0] == groups[1]:
        raise ResultsError(f"compare needs two different groups, got {groups[0]} twice; pass e.g. "
                           "--model-types clip,mammut")
    return groups[0], groups[1]

