"""Study plans: run identities, GFLOPs, sweeps, replicates, cooldowns, bad configs, and the paper's grid."""

from __future__ import annotations

import pandas as pd
import pytest

from vlscale.errors import UserError
from vlscale.models import flops
from vlscale.study import config as study_config
from vlscale.study.plan import make_plan, run_name


def test_tiny_default_const_plan():
    cfg = study_config.load()  # the embedded default
    plan = make_plan(cfg)
    assert [r.model for r in plan.runs] == ["shapes-clip-XS", "shapes-clip-S", "shapes-mammut-XS"]
    r = plan.run("shapes-mammut-XS_s13056_synth_bs16_lr0.002_w8_const")
    assert r.checkpoint_at_samples == (1024, 1280, 1600, 2048, 2560, 3264, 4096, 5184, 6528, 8192, 10304, 13056)
    assert r.steps == 816
    assert r.gflops_per_sample == pytest.approx(flops.forward_flops("shapes-mammut-XS").paper / 1e9)
    assert r.compute_gflops == pytest.approx(13056 * 0.100069376)
    assert plan.run("shapes-clip-S_s104000_synth_bs64_lr0.002_w8_const").budgets[-1] == 104000
    assert plan.total_gflops == pytest.approx(sum(x.compute_gflops for x in plan.runs))
    # One compile per distinct model: 3 in the estimate; the table prints the total.
    text = plan.table()
    assert "3 runs" in text and "3 compilations" in text and "GFLOPs" in text


def test_cosine_sweep_replicates_and_per_model_values():
    cfg = study_config.load()
    cfg.schedule = "cosine"
    cfg.sweep = {"lr": [1e-3, 2e-3], "global_batch_size": [64], "warmup": [4]}
    cfg.models.clip = ["shapes-clip-XS", "shapes-clip-M"]
    cfg.sweep_per_model = {"shapes-clip-M": {"lr": [5e-4]}}
    cfg.replicates = {"count": 3, "models": ["shapes-clip-XS"], "samples_seen": [1024]}
    plan = make_plan(cfg)
    clip_xs = [r for r in plan.runs if r.model == "shapes-clip-XS"]
    assert len(clip_xs) == 21 * 2 + 2 * 2  # 21 budgets x 2 lrs, + 2 extra seeds at the replicated budget
    assert {r.seed for r in clip_xs if r.samples == 1024} == {0, 1, 2}
    assert {r.lr for r in plan.runs if r.model == "shapes-clip-M"} == {5e-4}
    assert all(r.budgets == (r.samples,) and r.schedule == "cosine" for r in plan.runs)
    assert run_name("m", "d", 1024, 64, 1e-3, 4, "cosine", 2) == "m_s1024_d_bs64_lr0.001_w4_cosine_seed2"


def test_const_cooldowns_form_stage_one():
    cfg = study_config.load()
    cfg.cooldown_fraction = 0.2
    plan = make_plan(cfg)
    stage0, stage1 = plan.stage(0), plan.stage(1)
    assert len(stage0) == 3 and len(stage1) == 21 + 21 + 12
    cd = next(r for r in stage1 if r.model == "shapes-clip-S" and r.init_from.endswith("@32"))
    assert cd.schedule == "const-cooldown" and cd.cooldown_steps == 7 and cd.samples == (32 + 7) * 64
    assert cd.depends_on == "shapes-clip-S_s104000_synth_bs64_lr0.002_w8_const"
    assert list(plan.runs).index(cd) > list(plan.runs).index(plan.run(cd.depends_on))


@pytest.mark.parametrize("change, message", [
    ({"schedule": "linear"}, "schedule 'linear'"),
    ({"samples_seen": [2048, 1024]}, "increasing"),
    ({"samples_seen": []}, "positive integers"),
    ({"models": {"clip": ["no-such-model"], "mammut": ["shapes-mammut-XS"]}}, "unknown model 'no-such-model'"),
    ({"models": {"clip": ["shapes-mammut-XS"], "mammut": ["shapes-mammut-S"]}}, "is a mammut model"),
    ({"sweep": {"lr": [], "global_batch_size": [64], "warmup": [8]}}, "sweep.lr"),
    ({"sweep": {"lr": [1e-3], "global_batch_size": [64], "warmup": [16]}}, "still in the warm-up"),
])
def test_bad_study_configs_are_one_line_errors(change, message):
    cfg = study_config.load()
    for k, v in change.items():
        cfg[k] = v
    with pytest.raises(UserError, match=message):
        study_config.validate(cfg)
        make_plan(cfg)


def test_unknown_config_name_and_groups():
    with pytest.raises(UserError, match="unknown study config 'nope'.*tiny_shapes"):
        study_config.load("nope")
    cfg = study_config.load()
    cfg.fit.groups = ["clip", "siglip"]
    with pytest.raises(UserError, match=r"fit.groups \['siglip'\]"):
        study_config.validate(cfg)


def test_paper_grid_matches_the_papers_compute_range(shared_data):
    plan = make_plan(study_config.load("configs/study/paper_clip_mammut.py"))
    table = pd.read_csv(shared_data / "laion_scaling_results.csv")
    sel = table[(table.pretrain_dataset == "datacomp_1b") & (table.lr_scheduler == "cosine")
                & table.model_type.isin(["clip", "mammut"]) & (table.downstream_dataset == "imagenet1k")]
    # 14 CLIP + 15 MaMMUT scales x 11 samples-seen scales, 2-6 sweep points per scale (44 per model).
    assert len(plan.runs) == 29 * 44 == 1276
    assert {r.model_type for r in plan.runs} == {"clip", "mammut"}
    assert sorted({r.samples for r in plan.runs}) == sorted(sel.samples_seen_actual.unique())
    computes = [r.compute_gflops for r in plan.runs]
    # The smallest (ViT-S-32 at 1.28M) and largest (MaMMUT ViT-H-14 at 3.07B) runs equal the published table's.
    assert min(computes) == pytest.approx(sel.compute_gflops_actual.min(), rel=1e-3)
    assert max(computes) == pytest.approx(sel.compute_gflops_actual.max(), rel=1e-3)
    assert 5e13 < plan.total_gflops < 6e13
    models = {(r.model_type, r.model.removeprefix("mammut_")) for r in plan.runs}
    assert models == set(zip(sel.model_type, sel.model))


def test_paper_const_cooldowns_start_from_kept_steps_when_the_budget_is_not_a_multiple_of_the_batch():
    # The paper's 1.28e9 samples at batch 90,624 is 14,124.3 steps: the trainer keeps step 14,125 (ceil), and the
    # cooldown must start there, not at 14,124 (floor), which no run keeps.
    from vlscale.train.budgets import budget_step, milestone_steps

    cfg = study_config.load("configs/study/paper_clip_mammut.py")
    cfg.models = {"clip": ["ViT-B-32"], "mammut": ["mammut_ViT-B-32"]}
    cfg.samples_seen = [640_000_000, 1_280_000_000, 3_072_000_000]
    cfg.schedule = "const"
    cfg.cooldown_fraction = 0.2
    cfg.sweep = {"global_batch_size": [90624], "lr": [2e-3], "warmup": [6000]}  # a const run: one sweep
    plan = make_plan(cfg)
    parent = plan.run("ViT-B-32_s3072000000_datacomp_1b_bs90624_lr0.002_w6000_const")
    assert milestone_steps(parent.checkpoint_at_samples, 90624) == [7063, 14125, 33899]
    cooldowns = [r for r in plan.stage(1) if r.depends_on == parent.name]
    assert sorted(int(r.init_from.rsplit("@", 1)[1]) for r in cooldowns) == [7063, 14125, 33899]
    cd = next(r for r in cooldowns if r.init_from.endswith("@14125"))
    assert cd.cooldown_steps == 2825 and cd.samples == (14125 + 2825) * 90624 and cd.steps == 14125 + 2825
    assert budget_step(1_280_000_000, 90624) == 14125 and budget_step(90624 * 3, 90624) == 3


def test_budgets_that_share_a_step_are_rejected():
    cfg = study_config.load()
    cfg.samples_seen = [1000, 1024, 2048]  # at batch 32 (warm-up 8): 1000 and 1024 samples both end at step 32
    cfg.sweep = {"lr": [1e-3], "global_batch_size": [32], "warmup": [8]}
    with pytest.raises(UserError, match="budgets 1000 and 1024 end at the same step 32"):
        make_plan(cfg)
