"""The fitter's intervals at the edges, as a statistician would probe them: as many points as parameters, fewer,
noise-free data from the law, flat data, a parameter on its bound, NaN/inf inputs, ties in compute. Every case
asserts what the code does: no interval and why, a specific error, or a width that scales with the noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import vlscale.scaling.fit as fit
from vlscale.errors import UserError
from vlscale.scaling import api, comparison, form_choice, uncertainty
from vlscale.scaling.results import ResultsError

X = np.geomspace(1e6, 1e9, 8)
AT = np.array([4e9])
# a standardised noise pattern (mean 0, sd 1) reused at several amplitudes
EPS = np.array([0.9, -1.3, 0.2, 1.1, -0.4, -1.0, 1.5, -1.0])
EPS = (EPS - EPS.mean()) / EPS.std(ddof=1)


def power(x, a=3.0, c=-0.15):
    return a * np.asarray(x) ** c


def table(groups: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """A results table with one run per point (model type = group), accuracy = 1 - error."""
    rows = []
    for g, (x, err) in groups.items():
        for i, (c, e) in enumerate(zip(x, err)):
            rows.append({"model": f"{g}-{i}", "model_type": g, "samples_seen": 1000.0 * (i + 1), "compute_gflops": c,
                         "gflops_per_sample": c / (1000.0 * (i + 1)),
                         "pretrain_dataset": "d", "lr_scheduler": "const", "downstream_dataset": "b",
                         "metric": "acc1", "value": 1.0 - e})
    return pd.DataFrame(rows)


FIT_KW = dict(benchmark="b", metric="acc1", pretrain_dataset="d", frontier="naive", form="power")


# ------------------------------------------------------------------------------------------------ n == p, n < p
@pytest.mark.parametrize("bootstrap", [0, 200])
def test_as_many_points_as_parameters_gives_no_interval_and_says_why(bootstrap):
    x = X[:2]
    rep = api.fit(table({"clip": (x, power(x) * np.exp(0.02 * EPS[:2]))}), bootstrap=bootstrap, predict=[4e9],
                  **FIT_KW)
    g = rep.groups["clip"]
    assert g.undetermined.startswith("undetermined: 2 points for 2 parameters")
    assert g.interval_method == g.undetermined
    p = g.predictions[0]
    # the point estimate exists (the law interpolates), the interval does not: NaN, never a zero-width band
    assert np.isfinite(p["error"]) and all(np.isnan(p[k]) for k in ("lo", "hi", "pred_lo", "pred_hi"))
    assert np.isnan(g.residual_sd) and g.residual_dof == 0 and g.grid_boot is None and g.grid_se is None
    assert "has no interval: undetermined: 2 points for 2 parameters" in rep.summary()


def test_residual_scale_has_no_made_up_degree_of_freedom():
    x = X[:3]
    f = fit.fit_curve(x, power(x), "power_floor", n_seeds=4)
    s, dof = uncertainty.residual_scale(f, x, power(x))
    assert np.isnan(s) and dof == 0
    lo, hi = uncertainty.prediction_interval(np.array([0.5]), np.array([0.4]), np.array([0.6]), s, dof, 0.95)
    assert np.isnan(lo[0]) and np.isnan(hi[0])


def test_fewer_points_than_parameters_is_an_error_naming_the_counts():
    x = X[:3]
    with pytest.raises(ResultsError, match="clip has 3 frontier points to fit .* form saturation_both has 4 parameters"):
        api.fit(table({"clip": (x, power(x))}), bootstrap=0, **{**FIT_KW, "form": "saturation_both"})
    with pytest.raises(UserError, match="4 parameters but only 3 points"):
        fit.fit_curve(x, power(x), "saturation_both")
    f = fit.fit_curve(X, power(X), "saturation_both", n_seeds=4)
    with pytest.raises(UserError, match="4 parameters but only 3 points"):
        uncertainty.delta_interval(f, x, power(x), AT)
    with pytest.raises(UserError, match="undetermined: 4 points for 4 parameters"):
        uncertainty.bootstrap_fit(X[:4], power(X[:4]), n_boot=20)


def test_a_comparison_resting_on_an_undetermined_group_is_never_resolved():
    # clip: 2 points for the 2-parameter law (interpolated); mammut: 8 clean points, far lower error
    cmp = api.compare(table({"clip": (X[:2], power(X[:2])), "mammut": (X, 0.5 * power(X) * np.exp(0.01 * EPS))}),
                      groups=("clip", "mammut"), min_compute=None, max_samples_seen=None, predict=[4e9], bootstrap=0,
                      lr_scheduler="const", **FIT_KW)
    assert cmp.winner == "mammut"  # the point estimate is clear ...
    assert not cmp.resolved  # ... but one side has no interval
    assert cmp.verdict.startswith("not resolved: clip undetermined: 2 points for 2 parameters")
    assert cmp.strength["interval"].startswith("none (clip: undetermined")
    assert np.isnan(cmp.comparison[0]["lo"])


def test_bootstrap_counts_resamples_that_cannot_identify_the_law():
    """4 points, 3 parameters: only resamples with all 4 points distinct (24/256 = 9 %) leave a residual; the rest
    are counted and left out, and with so few left the group falls back to the delta method (1 dof)."""
    x = X[::2]
    y = power(x) * np.exp(0.02 * EPS[:4]) + 0.05
    rep = api.fit(table({"clip": (x, y)}), bootstrap=400, predict=[4e9], **{**FIT_KW, "form": "power_floor"})
    g = rep.groups["clip"]
    assert g.unidentified_refits == pytest.approx(400 * (1 - 24 / 256), abs=40)
    assert g.interval_method.startswith("delta method (bootstrap undetermined: only")
    assert g.grid_boot is None and g.grid_dof == 1
    p = g.predictions[0]
    assert p["hi"] - p["lo"] > 0 and np.isfinite(p["hi"])
    direct = uncertainty.bootstrap_fit(x, y, "power_floor", n_boot=400, predict_at=AT)
    assert direct.unidentified == pytest.approx(400 * (1 - 24 / 256), abs=40)
    assert np.isnan(direct.predictions).any(axis=1).sum() == direct.unidentified + direct.failed


# ------------------------------------------------------------------------------------------------ exact and flat
def test_noise_free_data_from_the_law_gives_the_law_and_a_vanishing_interval():
    y = power(X)
    f = fit.fit_curve(X, y, "power")
    np.testing.assert_allclose(f.predict(AT), power(AT), rtol=1e-8)
    lo, hi = uncertainty.delta_interval(f, X, y, AT)
    assert 0 <= (hi - lo)[0] < 1e-8 * power(AT)[0]
    b = uncertainty.bootstrap_fit(X, y, "power", n_boot=100, predict_at=AT, full_fit=f)
    blo, bhi = b.interval()
    assert (bhi - blo)[0] < 1e-8 and b.unidentified == 0


def test_interval_width_is_proportional_to_the_noise():
    """Linear regression in log-log space: the delta half-width is exactly proportional to the noise amplitude;
    for the nonlinear power law fitted in linear y, proportional to first order."""
    widths = {}
    for form in ("loglinear", "power"):
        for s in (0.01, 0.02, 0.04):
            y = power(X) * np.exp(s * EPS)
            f = fit.fit_curve(X, y, form)
            lo, hi = uncertainty.delta_interval(f, X, y, AT)
            widths[form, s] = float(np.log(hi[0] / lo[0])) if form == "loglinear" else float(hi[0] - lo[0])
    assert widths["loglinear", 0.02] / widths["loglinear", 0.01] == pytest.approx(2.0, rel=1e-6)
    assert widths["loglinear", 0.04] / widths["loglinear", 0.01] == pytest.approx(4.0, rel=1e-6)
    assert widths["power", 0.02] / widths["power", 0.01] == pytest.approx(2.0, rel=0.05)
    assert widths["power", 0.04] / widths["power", 0.01] == pytest.approx(4.0, rel=0.1)


def test_flat_data_fits_the_constant_with_a_vanishing_interval():
    y = np.full(X.size, 0.3)
    f = fit.fit_curve(X, y, "power")
    assert f.params["c"] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(f.predict(AT), 0.3, rtol=1e-9)
    lo, hi = uncertainty.delta_interval(f, X, y, AT)
    assert lo[0] - 1e-12 <= 0.3 <= hi[0] + 1e-12 and hi[0] - lo[0] < 1e-9
    # a law that cannot be exactly flat (c < 0) puts the level in its floor d and shrinks the power term
    g = fit.fit_curve(X, y, "power_floor")
    assert g.params["d"] == pytest.approx(0.3, rel=1e-6) and g.params["a"] * X[0] ** g.params["c"] < 1e-6
    lo, hi = uncertainty.delta_interval(g, X, y, AT)
    assert hi[0] - lo[0] < 1e-6


def test_a_parameter_on_its_bound_keeps_a_finite_interval_that_brackets_the_fit():
    """Data below any floor (a power law minus a constant, 1 % noise): the best floor d of a·C^c + d is 0, on its
    bound; it is reported there, the delta method treats it as fixed (no division by a zero column), and the
    interval is finite and brackets the fit."""
    y = (power(X) - 0.1) * np.exp(0.01 * EPS)
    f = fit.fit_curve(X, y, "power_floor")
    assert "d" in f.at_bound
    lo, hi = uncertainty.delta_interval(f, X, y, AT)
    centre = f.predict(AT)[0]
    assert np.isfinite(lo[0]) and np.isfinite(hi[0]) and lo[0] < centre < hi[0]
    assert 0 < hi[0] - lo[0] < 1.0


# ------------------------------------------------------------------------------------------------ bad inputs, ties
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_inputs_are_refused_with_the_field_named(bad):
    y = power(X).copy()
    y[3] = bad
    with pytest.raises(UserError, match="y must be finite and > 0"):
        fit.fit_curve(X, y, "power")
    with pytest.raises(UserError, match="y must be finite and > 0"):
        uncertainty.bootstrap_fit(X, y, "power", n_boot=20)
    x = X.copy()
    x[2] = bad
    with pytest.raises(UserError, match="x must be finite and > 0"):
        fit.fit_curve(x, power(X), "power")
    df = table({"clip": (X, power(X))})
    df.loc[2, "compute_gflops"] = bad
    with pytest.raises(ResultsError, match="compute_gflops"):
        api.fit(df, bootstrap=0, **FIT_KW)


def test_ties_in_compute_do_not_identify_the_law():
    """Three points at two computes cannot pin down a 3-parameter law however many points there are; with
    replicates at enough distinct computes, the replicate scatter is real residual noise."""
    x = np.array([1e6, 1e6, 1e8, 1e8])
    y = np.array([0.8, 0.82, 0.5, 0.49])
    f = fit.fit_curve(x, y, "power")
    assert uncertainty.undetermined_reason(x, 3).startswith("undetermined: 4 points at only 2 distinct compute")
    assert uncertainty.undetermined_reason(x, 2) is None  # 2 parameters, 2 computes, 2 replicate dof
    lo, hi = uncertainty.delta_interval(f, x, y, AT)
    assert np.isfinite(lo[0]) and hi[0] > lo[0]
    # a resample of three replicates at one compute has 3 distinct points but one compute: not identified
    x5 = np.array([1e6, 1e6, 1e6, 1e8, 1e8])
    w = np.array([[2, 1, 2, 0, 0], [1, 1, 1, 1, 1], [1, 0, 2, 1, 1], [0, 0, 0, 3, 2]], dtype=float)
    np.testing.assert_array_equal(uncertainty.identifies(w, 2, x5), [False, True, True, False])
    np.testing.assert_array_equal(uncertainty.identifies(w, 2), [True, True, True, False])
    # in a results table, tied runs share one frontier point (the better one)
    rep = api.fit(table({"clip": (np.r_[X, X[3]], np.r_[power(X), power(X[3]) + 0.01])}), bootstrap=0, **FIT_KW)
    assert int(rep.groups["clip"].fitted.sum()) == X.size


# ------------------------------------------------------------------------------------------------ noise floor, fallback
def test_an_interval_narrower_than_the_residual_noise_is_not_resolved():
    rep = api.fit(table({"a": (X, power(X) * np.exp(0.05 * EPS)), "b": (X, 0.9 * power(X) * np.exp(0.05 * EPS))}),
                  bootstrap=0, predict=[4e9], model_types=("a", "b"), **FIT_KW)
    a, b = rep.groups["a"], rep.groups["b"]
    j = len(a.grid) - 1
    floor = comparison.noise_floor(a, b, j, 0.95)
    # z · sqrt(sum (s·pred)^2 / n): both groups have the same relative scatter 0.05-ish over 8 points
    expect = 1.959964 * np.sqrt(sum((g.residual_sd * g.grid_pred[j]) ** 2 / 8 for g in (a, b)))
    assert floor == pytest.approx(expect, rel=1e-6) and floor > 0
    # shrink the delta standard errors 100-fold: the interval now excludes 0 but is narrower than the scatter
    for g in (a, b):
        g.grid_se = g.grid_se / 100
    cmp = comparison.compare_fitted(rep, "a", "b", [4e9], rep_options())
    assert cmp.strength["excludes_zero"] and not cmp.resolved
    assert any(r.startswith("interval narrower than the residual noise allows") for r in cmp.strength["reasons"])


def rep_options():
    from vlscale.scaling.options import Options

    return Options.build(predict=(4e9,), bootstrap=0)


def test_form_fallback_keeps_a_spare_point_or_says_the_benchmark_cannot_be_fitted():
    forms = ["saturation_both", "power_floor", "power"]
    assert form_choice.fallback(forms, {"a": 9, "b": 6})["form"] == "saturation_both"  # 2 to spare
    five = form_choice.fallback(forms, {"a": 9, "b": 5})
    assert five["form"] == "power_floor" and five["spare"] == 2 and "b has 5 fitted frontier points" in five["note"]
    assert form_choice.fallback(forms, {"a": 4, "b": 9})["form"] == "power"
    three = form_choice.fallback(forms, {"a": 3, "b": 9})
    assert three["form"] == "power" and three["spare"] == 1 and "the interval is wide" in three["note"]
    none = form_choice.fallback(forms, {"a": 2, "b": 9})
    assert none["form"] is None and none["note"] == ("a has 2 fitted frontier points; the smallest law tried "
                                                      "(power, 2 parameters) needs at least 3")
