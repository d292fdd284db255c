"""Regression tests for the fitter defects of issue 10 (1-7) and the selection/output defects of issue 11 (6, 7).

Each test failed on the code before its fix. Small synthetic tables and bootstrap counts keep compilations few.
"""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from vlscale.scaling import api, report, uncertainty
from vlscale.scaling import results as R
from vlscale.scaling.results import ResultsError

from .test_api import BASE, COMPUTES, NEW, law, synthetic_table

N_BOOT = 40


def _group_rows(name, params, computes, seed, benchmark="crossing", metric="acc1", noise=0.004, shift=0.0):
    rng = np.random.default_rng(seed)
    err = law(params, computes) * np.exp(noise * rng.standard_normal(computes.size)) + shift
    return [dict(pretrain_dataset="synth", lr_scheduler="cosine", downstream_dataset=benchmark, metric=metric,
                 model_type=name, model=f"M{i}", samples_seen=c / 10.0, gflops_per_sample=10.0 * (1 + i % 3),
                 compute_gflops=c, value=(1.0 - e) if metric == "acc1" else e)
            for i, (c, e) in enumerate(zip(computes, err))]


def _twins(shift=0.0, metric="acc1"):
    """Two groups with the same points (``b`` shifted by ``shift`` in error)."""
    rows = _group_rows("a", NEW, COMPUTES, 5, metric=metric) + _group_rows("b", NEW, COMPUTES, 5, metric=metric,
                                                                             shift=shift)
    return pd.DataFrame(rows)


SEL = dict(benchmark="crossing", pretrain_dataset="synth", lr_scheduler="cosine")


# ------------------------------------------------------------------------------- issue 10, defect 1
def test_every_group_gets_its_own_bootstrap_stream():
    rep = api.fit(_twins(), **SEL, predict=[1e12], bootstrap=N_BOOT, leave_one_out=False)
    a, b = rep.groups["a"], rep.groups["b"]
    # Identical data and point counts: with one shared stream every resample was the same for both groups.
    assert not np.allclose(a.grid_boot, b.grid_boot)
    r = np.corrcoef(a.grid_boot[:, -1], b.grid_boot[:, -1])[0, 1]
    assert abs(r) < 0.5, r
    # One bootstrap implementation: uncertainty.bootstrap_fit with the group's stream gives the group's resamples.
    x, y = a.points["x"].to_numpy()[a.fitted], a.points["error"].to_numpy()[a.fitted]
    boot = uncertainty.bootstrap_fit(x, y, n_boot=N_BOOT, seed=api.bootstrap_stream(0, rep.selection, "a"),
                                     predict_at=[1e12], full_fit=a.curve)
    np.testing.assert_allclose(boot.predictions[:, 0], a.grid_boot[:, np.argmin(np.abs(a.grid - 1e12))], rtol=1e-9)


# ------------------------------------------------------------------------------- issue 10, defect 2
def test_frontier_scope_fit_ignores_runs_above_the_fit_limit(shared_data):
    df = R.load_results(shared_data / "laion_scaling_results.csv")
    sel = dict(benchmark="imagenet1k", pretrain_dataset="datacomp_1b", lr_scheduler="cosine", model_types=["mammut"],
               max_samples_seen=1e10, fit_max_compute=1e11, bootstrap=0, leave_one_out=False, predict=[2.59e12])
    big = df["compute_gflops_actual"] > 1e11
    fit_scope = api.fit(df, **sel)  # the default is frontier_scope="fit"
    dropped = api.fit(df[~big | (df.model_type != "mammut")], **sel)
    np.testing.assert_array_equal(fit_scope.groups["mammut"].curve.theta, dropped.groups["mammut"].curve.theta)
    g = fit_scope.groups["mammut"]
    assert g.heldout and all(h["compute"] > 1e11 for h in g.heldout)
    paper = api.fit(df, **sel, frontier_scope="all")
    gp = paper.groups["mammut"]
    # The paper's reading: bin edges over all runs, so the runs above 1e11 move the fitted frontier.
    assert not np.array_equal(gp.fitted, g.fitted)
    assert json.loads(json.dumps(report._clean(paper.to_json())))["selection"]["frontier_scope"] == "all"
    with pytest.raises(ResultsError, match="frontier scope"):
        api.fit(df, **sel, frontier_scope="some")


# ------------------------------------------------------------------------------- issue 10, defect 3
def test_prediction_interval_is_reported_beside_the_band():
    rep = api.fit(synthetic_table(), **SEL, groups=["new"], fit_max_compute=1e11, predict=[1e12], bootstrap=N_BOOT,
                  leave_one_out=False)
    g = rep.groups["new"]
    p = g.predictions[0]
    assert p["pred_lo"] < p["lo"] < p["error"] < p["hi"] < p["pred_hi"]
    for h in g.heldout:
        assert h["pred_lo"] <= h["lo"] and h["pred_hi"] >= h["hi"]
        assert h["inside_interval"] == bool(h["pred_lo"] <= h["observed"] <= h["pred_hi"])


def test_coverage_of_band_prediction_and_difference_intervals():
    """Nominal 95 %, 4x beyond the fitted range: band covers the true law, the prediction interval a new noisy
    observation, the difference interval the true difference of two laws (120 repetitions here; the bench runs
    200). The plain percentile interval of the difference over-covers (heavy-tailed resamples of both laws); the
    quartile interval that `compare` reports is calibrated, and so is the delta method's since its variance is
    the sandwich with multiplicative scatter (a constant residual variance covered the difference 100 %)."""
    from vlscale.scaling.coverage import coverage_simulation

    cov = coverage_simulation(120, n_boot=100, seed=0)
    for key in ("bootstrap_coverage", "delta_coverage", "bootstrap_prediction_coverage", "delta_prediction_coverage",
                "bootstrap_difference_coverage", "delta_difference_coverage"):
        assert 0.90 <= cov[key] <= 0.99, (key, cov[key])
    assert cov["bootstrap_percentile_difference_coverage"] >= cov["bootstrap_difference_coverage"]
    # The prediction interval is wider than the band: it covers new observations, which the band does not.
    assert cov["bootstrap_prediction_coverage"] >= cov["bootstrap_coverage"] - 0.03


# ------------------------------------------------------------------------------- issue 10, defect 4
def test_compare_benchmarks_with_the_same_selection_twice():
    cs = api.compare_benchmarks(synthetic_table(), groups=("base", "new"), benchmarks=[("crossing", "acc1")] * 2,
                                pretrain_datasets=["synth"], at=(1e12,), bootstrap=0, leave_one_out=False,
                                min_compute=None, max_samples_seen=None)
    assert len(cs.comparisons) == 2
    assert cs.comparisons[0].comparison[0]["diff"] == cs.comparisons[1].comparison[0]["diff"]


# ------------------------------------------------------------------------------- issue 10, defect 5
def test_unknown_metric_is_an_error_only_when_selected():
    from vlscale.scaling import metrics

    df = pd.concat([synthetic_table(), pd.DataFrame(_group_rows("new", NEW, COMPUTES, 1, metric="cider"))])
    df.loc[df.metric == "cider", "value"] = 1.3  # CIDEr is not a fraction
    df = R.validate_results(df)
    with pytest.raises(ResultsError, match="register_metric"):
        api.fit(df, benchmark="crossing", metric="cider", pretrain_dataset="synth", bootstrap=0)
    for name in ("acc1", "acc5", "mean_per_class_recall", "image_retrieval_recall@1", "text_retrieval_recall@10",
                 "generative_acc1", "generative_mean_acc1", "generative_acc5", "miou"):
        assert metrics.metric_kind(name) == "accuracy", name
    assert metrics.metric_kind("caption_loss") == "loss"
    np.testing.assert_allclose(R.error_rate([0.25], "generative_acc5"), [0.75])
    try:
        metrics.register_metric("cider", "score", error=lambda v: 1.0 / np.asarray(v))
        np.testing.assert_allclose(R.error_rate([2.0], "cider"), [0.5])
    finally:
        metrics.unregister_metric("cider")


# ------------------------------------------------------------------------------- issue 10, defect 6
def test_interval_bugs_are_not_hidden_as_missing_bands(monkeypatch):
    def broken(*a, **k):
        raise TypeError("a bug in the delta method")

    monkeypatch.setattr(uncertainty, "delta_se", broken)
    with pytest.raises(TypeError, match="a bug"):
        api.fit(synthetic_table(), **SEL, groups=["new"], predict=[1e12], bootstrap=0, leave_one_out=False)


def test_non_finite_refits_are_counted_and_fail_loudly(monkeypatch):
    real = uncertainty.fit_lib.fit_weighted_sets
    state = {"bad": 1}

    def flaky(*a, **k):
        out = real(*a, **k)
        if out["objective"].size >= N_BOOT:  # the bootstrap refits, not the main fit
            out["objective"] = out["objective"].copy()
            out["objective"][: state["bad"]] = np.inf
        return out

    monkeypatch.setattr(uncertainty.fit_lib, "fit_weighted_sets", flaky)
    rep = api.fit(synthetic_table(), **SEL, groups=["new"], predict=[1e12], bootstrap=N_BOOT, leave_one_out=False)
    g = rep.groups["new"]
    assert g.failed_refits == 1 and g.to_json()["failed_refits"] == 1
    assert np.isnan(g.grid_boot).any(axis=1).sum() == 1  # the failed refit is left out, not averaged in
    assert "1 of 40 bootstrap refits" in rep.summary()
    state["bad"] = 20
    with pytest.raises(ResultsError, match="20 of 40 bootstrap refits"):
        api.fit(synthetic_table(), **SEL, groups=["new"], predict=[1e12], bootstrap=N_BOOT, leave_one_out=False)


# ------------------------------------------------------------------------------- issue 10, defect 7
def test_batched_fit_equals_the_set_fitted_alone():
    """A short, noisy frontier fitted with a far-away one: the seed grid used to span both sets' compute, which
    moved this set's optimum by 4e-4 (relative, in theta) and left it at a worse objective."""
    import vlscale.scaling.fit as fit_lib
    from vlscale.scaling import forms

    rng = np.random.default_rng(4)
    x = np.geomspace(1e8, 3e9, 6)
    y = law(NEW, x) * np.exp(0.03 * rng.standard_normal(6))
    far = np.geomspace(1e12, 1e17, 6)
    start = forms.get_form("saturation_both").init_grid()[:1]
    alone = fit_lib.fit_curves_batched(x[None], y[None], None, "saturation_both", starts=start)[0]
    both = fit_lib.fit_curves_batched(np.stack([x, far]), np.stack([y, law(NEW, far)]), None, "saturation_both",
                                      starts=start)[0]
    np.testing.assert_allclose(both.theta, alone.theta, rtol=1e-9)
    assert both.objective == pytest.approx(alone.objective, rel=1e-12)


def test_api_fit_of_a_group_does_not_depend_on_the_other_groups():
    far = np.geomspace(1e10, 1e14, 17)
    df = pd.DataFrame(_group_rows("near", BASE, COMPUTES, 1) + _group_rows("far", NEW, far, 2))
    alone = api.fit(df, **SEL, groups=["near"], predict=[1e12], bootstrap=N_BOOT, leave_one_out=False)
    both = api.fit(df, **SEL, groups=["near", "far"], predict=[1e12], bootstrap=N_BOOT, leave_one_out=False)
    a, b = alone.groups["near"], both.groups["near"]
    np.testing.assert_allclose(a.curve.theta, b.curve.theta, rtol=1e-6)
    np.testing.assert_allclose(a.grid_boot, b.grid_boot, rtol=1e-6)  # the same resamples: the group's own stream


# ------------------------------------------------------------------------------- issue 11, item 6
def test_unknown_group_key_in_fit_max_compute():
    with pytest.raises(ResultsError, match="NEW.*groups: base, new"):
        api.fit(synthetic_table(), **SEL, fit_max_compute={"NEW": 1e11}, bootstrap=0)


def test_compare_a_group_with_itself_is_an_error():
    with pytest.raises(ResultsError, match="two different groups"):
        api.compare(synthetic_table(), groups=("new", "new"), benchmark="crossing", pretrain_dataset="synth")


def test_misspelled_optional_column_warns(tmp_path):
    df = synthetic_table()
    df["compute_gflops_actaul"] = df["compute_gflops"]
    with pytest.warns(R.ResultsWarning, match="compute_gflops_actaul.*compute_gflops_actual"):
        R.validate_results(df)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        R.validate_results(synthetic_table().assign(notes="x"))  # unrelated extra columns stay quiet


def test_semicolon_separated_csv_is_read(tmp_path):
    p = tmp_path / "r.csv"
    synthetic_table().to_csv(p, sep=";", index=False)
    df = R.load_results(p)
    assert len(df) == len(synthetic_table())


# ------------------------------------------------------------------------------- issue 11, item 7
@pytest.fixture(scope="module")
def delta_comparison():
    return api.compare(synthetic_table(), groups=("base", "new"), benchmark="crossing", pretrain_dataset="synth",
                       at=(1e11, 1e12), bootstrap=0, leave_one_out=False, min_compute=None, max_samples_seen=None,
                       fit_max_compute=None)


def test_latex_header_has_no_nested_math(delta_comparison):
    tex = report.latex_table([delta_comparison.fit])
    header = next(ln for ln in tex.splitlines() if "hat E" in ln)
    assert "$\\hat E(10^{11})$" in header or "$\\hat E(1\\times10^{11})$" in header, header
    for line in tex.splitlines():
        assert line.count("$") % 2 == 0, line
        assert "$$" not in line and "($" not in line, line


def test_single_panel_compare_figure_keeps_its_title_inside(delta_comparison):
    import dataclasses

    long = dataclasses.replace(delta_comparison, verdict="new below base for C > 1e9 GFLOPs (95% of bootstraps agree "
                               "at 1e12; held-out error 0.8 pp; well-conditioned at every requested compute)")
    ax = long.plot()
    fig = ax.figure
    fig.canvas.draw()
    box = ax.title.get_window_extent(fig.canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1


def test_delta_method_difference_interval_and_clipping(delta_comparison):
    for row in delta_comparison.comparison:
        assert np.isfinite(row["lo"]) and row["lo"] < row["diff"] < row["hi"]
    for g in delta_comparison.fit.groups.values():
        for p in g.predictions:
            assert 0.0 <= p["lo"] and p["hi"] <= 1.0 and 0.0 <= p["pred_lo"] and p["pred_hi"] <= 1.0


def test_a_negligible_difference_is_no_difference():
    cmp = api.compare(_twins(shift=1e-10), groups=("a", "b"), benchmark="crossing", pretrain_dataset="synth",
                      at=(1e12,), bootstrap=0, leave_one_out=False, min_compute=None, max_samples_seen=None)
    assert cmp.winner is None
    assert "no difference" in cmp.verdict


def test_loss_metric_differences_are_not_in_percentage_points():
    cmp = api.compare(_twins(shift=0.02, metric="caption_loss"), groups=("a", "b"), benchmark="crossing",
                      pretrain_dataset="synth", at=(1e12,), bootstrap=0, leave_one_out=False, min_compute=None,
                      max_samples_seen=None)
    text = cmp.summary()
    assert " pp" not in text
    assert cmp.winner == "a"


# ------------------------------------------------------------------------------- issue 10: form auto, cache
def test_form_auto_picks_the_candidate_with_the_lowest_future_error(monkeypatch):
    from vlscale.scaling import form_choice

    # Two candidates keep the test to two compilations; the true law is saturation_both, power_floor cannot bend.
    monkeypatch.setattr(form_choice, "candidates", lambda: [("saturation_both", "mse"), ("power_floor", "mse")])
    rep = api.fit(synthetic_table(), **SEL, groups=["new"], form="auto", predict=[1e12], bootstrap=0,
                  leave_one_out=False)
    choice = rep.form_choice
    assert rep.form == choice["form"] == "saturation_both" and choice["loss"] == "mse"
    errs = {r["form"]: r["error"] for r in choice["candidates"]}
    assert errs["saturation_both"] < errs["power_floor"]
    assert "form chosen by leave-future-out error" in rep.summary()
    assert json.loads(json.dumps(report._clean(rep.to_json())))["form_choice"]["form"] == "saturation_both"


def test_compilation_cache_dir_is_skipped_when_not_writable(tmp_path, monkeypatch):
    from vlscale.runtime import compilation_cache as jax_cache

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    monkeypatch.setenv(jax_cache.ENV, str(ro / "jax"))
    try:
        assert jax_cache.cache_dir() == ro / "jax"
        assert not jax_cache._writable(ro / "jax") or __import__("os").geteuid() == 0
    finally:
        ro.chmod(0o700)
    monkeypatch.setenv(jax_cache.ENV, "off")
    assert jax_cache.cache_dir() is None


def test_one_compilation_cache_setting_for_trainer_evaluator_and_fitter(tmp_path, monkeypatch):
    from vlscale.runtime import paths
    from vlscale.runtime import compilation_cache as jax_cache

    for var in (paths.COMPILATION_CACHE_ENV, paths.COMPILATION_CACHE_OLD_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.compilation_cache_dir() == tmp_path / "xdg" / "vlscale" / "jax"
    monkeypatch.setenv(paths.COMPILATION_CACHE_OLD_ENV, str(tmp_path / "old"))  # the fitter's earlier name
    assert jax_cache.cache_dir() == tmp_path / "old"
    monkeypatch.setenv(paths.COMPILATION_CACHE_ENV, str(tmp_path / "new"))  # the one name wins
    assert jax_cache.cache_dir() == paths.compilation_cache_dir() == tmp_path / "new"
    assert paths.compilation_cache_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"  # a training config's field
    for off in ("none", "off", "0", " OFF "):
        monkeypatch.setenv(paths.COMPILATION_CACHE_ENV, off)
        assert jax_cache.cache_dir() is None and paths.compilation_cache_dir() is None
        assert paths.compilation_cache_dir(off) is None
    monkeypatch.setenv(paths.COMPILATION_CACHE_ENV, "")  # empty: not given
    assert paths.compilation_cache_dir() == tmp_path / "old"
