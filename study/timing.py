"""One time model for a study: the plan's per-run estimate and the runner's progress line both come from it.

A run's time = a start-up cost (compilation of its (model, batch) shape, data, checkpoint setup) + its trained
samples × training GFLOPs per sample / the machine's sustained training GFLOP/s + evaluation per kept checkpoint.

The three numbers come from the study config's ``estimate`` until runs have been measured on this machine; then
from the runs the study directory holds (``calibrated``): the steady rate from each trained run's metrics.jsonl,
leaving out the first logged line (it holds the compilation), the start-up as the run's training wall time minus
its samples at that rate, and evaluation time per evaluated checkpoint from its study state. The first run of a
study calibrates the rest.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from vlscale.runtime import paths
from vlscale.study import layout


@dataclasses.dataclass(frozen=True)
class TimeModel:
    train_gflops_per_s: float  # sustained training GFLOP/s (forward + backward) of one run
    startup_s: float  # per run: compilation of its shape, data, setup
    eval_s: float  # per evaluated checkpoint
    source: str  # "config estimate" or "measured: N runs on this machine"
    by_model: dict = dataclasses.field(default_factory=dict)  # model -> measured GFLOP/s (its own runs)

    def train_s(self, run, *, first_of_shape: bool = True) -> float:
        """Training wall time of ``run``; the start-up counts once per (model, batch) shape."""
        rate = self.by_model.get(run.model, self.train_gflops_per_s)
        steady = run.trained_samples * run.train_gflops_per_sample / rate
        return steady + (self.startup_s if first_of_shape else 0.0)

    def eval_total_s(self, run) -> float:
        return self.eval_s * len(run.budgets)


def from_config(cfg) -> TimeModel:
    from vlscale.study.plan import _get

    est = _get(cfg, "estimate", {}) or {}
    return TimeModel(float(_get(est, "train_gflops_per_s", 10.0)), float(_get(est, "compile_s", 20.0)),
                     float(_get(est, "eval_s", 5.0)), "config estimate")


def steady_samples_per_s(workdir: Path) -> float | None:
    """Median samples/s of a run's logged steps after the first (the first holds the compilation)."""
    p = paths.resolve(workdir) / "metrics.jsonl"
    if not p.is_file():
        return None
    rates = []
    for line in p.read_text().splitlines()[1:]:
        try:
            v = float(json.loads(line)["samples_per_s"])
        except (ValueError, KeyError, TypeError):
            continue
        if v > 0:
            rates.append(v)
    return statistics.median(rates) if rates else None


def calibrated(cfg, plan, study_dir) -> TimeModel:
    """The config's estimate, replaced by what the study directory's finished runs measured on this machine."""
    base = from_config(cfg)
    if study_dir is None or not paths.resolve(study_dir).is_dir():
        return base
    rates, startups, evals, by_model = [], [], [], {}
    for r in plan.runs:
        if not layout.is_trained(study_dir, r.name):
            continue
        st = layout.read_state(study_dir, r.name)
        sps = steady_samples_per_s(layout.run_dir(study_dir, r.name))
        train_s = float(st.get("train_s", 0.0) or 0.0)
        if sps is None or train_s <= 0:
            continue
        rates.append(sps * r.train_gflops_per_sample)
        by_model.setdefault(r.model, []).append(rates[-1])
        startups.append(max(0.0, train_s - r.trained_samples / sps))
        if st.get("status") == "done" and st.get("eval_s"):
            evals.append(float(st["eval_s"]) / max(1, len(r.budgets)))
    if not rates:
        return base
    return TimeModel(statistics.median(rates), statistics.median(startups),
                     statistics.median(evals) if evals else base.eval_s,
                     f"measured: {len(rates)} run{'s' if len(rates) != 1 else ''} on this machine",
                     {m: statistics.median(v) for m, v in by_model.items()})
