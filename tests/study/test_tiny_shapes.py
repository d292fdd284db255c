"""The embedded study's promises (configs/study/tiny_shapes.py, `make demo`), checked on its plan without training.

docs/study.md and the README report what the demo measured; these are the structural conditions those numbers
rest on: every group has at least five checkpoints to fit and some to hold out, the groups' compute ranges overlap,
and the verdict's targets lie within 2x of each group's largest trained compute.
"""

from __future__ import annotations

import pandas as pd

from vlscale.study import config as study_config
from vlscale.study import report, runner
from vlscale.study.plan import make_plan


def _checkpoints(cfg) -> pd.DataFrame:
    """One row per evaluated checkpoint the plan promises (const: one per budget of each run)."""
    rows = [{"model_type": r.model_type, "model": r.model, "samples_seen": b, "compute_gflops": r.gflops_per_sample * b}
            for r in make_plan(cfg).runs for b in r.budgets]
    return pd.DataFrame(rows)


def test_every_group_has_five_points_to_fit_and_points_to_hold_out():
    cfg = study_config.load("tiny_shapes")
    assert list(cfg.fit.groups) == ["clip", "mammut"] and cfg.schedule == "const"
    pts = _checkpoints(cfg)
    for group, g in pts.groupby("model_type"):
        cut = float(cfg.fit.fit_fraction) * g["compute_gflops"].max()
        fit_side = g[g["compute_gflops"] <= cut]
        held = g[g["compute_gflops"] > cut]
        # The cheapest model of a group alone gives five checkpoints below the cut. Necessary, not sufficient, for five
        # fitted frontier points: a checkpoint no better than a cheaper one is dominated (MaMMUT's plateau at chance
        # left 2-6 of its 9 on the frontier in the measured seeds, docs/study.md).
        cheapest = g.groupby("model")["compute_gflops"].min().idxmin()
        assert (fit_side["model"] == cheapest).sum() >= 5, group
        assert fit_side["compute_gflops"].nunique() >= 5 and len(held) >= 2, group


def test_groups_overlap_and_the_verdict_is_judged_within_2x_of_each_group():
    cfg = study_config.load("tiny_shapes")
    pts = _checkpoints(cfg)
    lo = pts.groupby("model_type")["compute_gflops"].min()
    hi = pts.groupby("model_type")["compute_gflops"].max()
    assert lo.max() < hi.min()  # the two compute ranges overlap
    targets = report.predict_targets(cfg, pts)
    assert targets
    for group in cfg.fit.groups:
        assert all(t <= 2.0 * hi[group] for t in targets), (group, targets, hi[group])
        assert all(t > lo.max() for t in targets)


def test_plan_fits_the_demo_budget_by_its_own_estimate():
    # make demo: about 9 minutes for the study on the 2-core box (the README's measured table); the plan's
    # estimate (configured FLOP rate, compile and eval seconds) must stay inside it.
    cfg = study_config.load("tiny_shapes")
    plan = make_plan(cfg)
    assert plan.total_est_s < 9 * 60
    assert len({r.model for r in plan.runs}) == len(plan.runs)  # one const run per model


def test_every_run_gets_the_clean_data_knobs(tmp_path):
    # The knobs are real training-config fields (configs/data.py lists every SynthConfig field), so each run's
    # training config is built, and the evaluator scores each run on that same distribution.
    cfg = study_config.load("tiny_shapes")
    for r in make_plan(cfg).runs:
        knobs = runner.build_train_config(cfg, r, tmp_path).data.synth.knobs
        assert knobs.noise_max == 0.0 and knobs.clutter_max == 0 and knobs.distractor_prob == 0.0
        assert tuple(knobs.background_kinds) == ("solid",) and knobs.image_size == 32


def test_data_knobs_are_command_line_fields():
    # What `vlscale study launch --backend print` writes for the clean-data knobs reads back (bare words included).
    from vlscale.configs import loading
    from vlscale.configs import train as train_config

    tc = train_config.get_config("model=shapes-clip-XS,data=synth")
    loading.apply_overrides(tc, [("data.synth.knobs.background_kinds", "solid,gradient"),
                                 ("data.synth.knobs.p_mention_colour", "0.5"), ("data.synth.knobs.clutter_max", "0")])
    assert tc.data.synth.knobs.background_kinds == ("solid", "gradient")
    assert tc.data.synth.knobs.p_mention_colour == 0.5 and tc.data.synth.knobs.clutter_max == 0
