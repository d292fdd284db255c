"""fit / compare on constructed curves with known answers: crossover, verdict, held-out metrics, leave-one-out."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from vlscale.scaling import api
from vlscale.scaling.results import ResultsError

# Two saturation laws a·(C+b)^c + d that cross once: "base" is better below the crossover, "new" above it.
BASE = {"a": 20.0, "b": 1e8, "c": -0.2, "d": 0.25}
NEW = {"a": 250.0, "b": 3e8, "c": -0.3, "d": 0.10}
TRUE_CROSSOVER = 1.001323e9  # brentq root of NEW(C) - BASE(C) on [1e8, 1e13]
COMPUTES = np.geomspace(1e8, 1e12, 17)  # one frontier point every quarter decade
GFLOPS_PER_SAMPLE = 10.0
NOISE = 0.004  # multiplicative noise on the error
N_EXPONENT = 0.3  # model size of the synthetic runs grows as C^0.3


def law(p, c):
    return p["a"] * (np.asarray(c) + p["b"]) ** p["c"] + p["d"]


def _rows(model_type, params, benchmark, seed, extra=()):
    rng = np.random.default_rng(seed)
    err = law(params, COMPUTES) * np.exp(NOISE * rng.standard_normal(COMPUTES.size))
    pts = list(zip(COMPUTES, err)) + list(extra)
    return [
        dict(pretrain_dataset="synth", lr_scheduler="cosine", downstream_dataset=benchmark, metric="acc1",
             model_type=model_type, model=f"M{i}", samples_seen=c / model_size(c), gflops_per_sample=model_size(c),
             compute_gflops=c, value=1.0 - e)
        for i, (c, e) in enumerate(pts)
    ]


def model_size(c):
    """GFLOPs per sample of the run at compute c: N grows as C^N_EXPONENT, so D = C / N as C^(1 - N_EXPONENT)."""
    return GFLOPS_PER_SAMPLE * (c / COMPUTES[0]) ** N_EXPONENT


def synthetic_table() -> pd.DataFrame:
    """'crossing': NEW overtakes BASE at TRUE_CROSSOVER; 'reversed': the laws swapped (BASE wins at scale).

    Each group also has two dominated runs (much worse error at distinct compute) that the frontier must drop.
    """
    dominated = [(3e9, 0.95), (3e11, 0.9)]
    rows = (_rows("base", BASE, "crossing", 1, dominated) + _rows("new", NEW, "crossing", 2, dominated)
            + _rows("base", NEW, "reversed", 3) + _rows("new", BASE, "reversed", 4))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def table():
    return synthetic_table()


@pytest.fixture(scope="module")
def comparisons(table):
    return api.compare_benchmarks(table, groups=("base", "new"), benchmarks=[("crossing", "acc1"), ("reversed", "acc1")],
                                  pretrain_datasets=["synth"], at=(1e11, 1e12), bootstrap=200, min_compute=None,
                                  max_samples_seen=None)


def test_comparison_recovers_the_known_crossover(comparisons):
    c = comparisons.comparisons[0]
    assert c.winner == "new"
    assert c.crossover["compute"] == pytest.approx(TRUE_CROSSOVER, rel=0.1)
    assert c.crossover["lo"] < TRUE_CROSSOVER < c.crossover["hi"]
    assert c.crossover["fraction_crossing"] > 0.95
    assert c.agree == 1.0
    assert re.fullmatch(r"new below base for C > (9\.\de8|1(\.\d)?e9) GFLOPs \(100% of bootstraps agree at 1e12; "
                        r"well-conditioned\)", c.verdict), c.verdict
    assert c.resolved and c.strength["excludes_zero"] and c.strength["well_conditioned"]


def test_comparison_difference_matches_the_true_laws(comparisons):
    c = comparisons.comparisons[0]
    for row in c.comparison:
        true = law(NEW, row["compute"]) - law(BASE, row["compute"])
        assert row["diff"] == pytest.approx(true, abs=0.01)
        assert row["lo"] <= row["diff"] <= row["hi"]
        assert row["new"] - row["base"] == pytest.approx(row["diff"])


def test_reversed_benchmark_makes_the_verdict_inconsistent(comparisons):
    rev = comparisons.comparisons[1]
    assert rev.winner == "base"
    assert rev.crossover["compute"] == pytest.approx(TRUE_CROSSOVER, rel=0.1)
    assert not comparisons.consistent
    assert comparisons.consistency == "inconsistent: new wins 1/2, base wins 1/2" or \
        comparisons.consistency == "inconsistent: base wins 1/2, new wins 1/2"


def test_fit_recovers_the_laws_and_drops_dominated_runs(comparisons):
    rep = comparisons.comparisons[0].fit
    for name, truth in (("base", BASE), ("new", NEW)):
        g = rep.groups[name]
        assert len(g.points) == COMPUTES.size + 2
        assert g.n_frontier == COMPUTES.size  # the two dominated runs are not on the frontier
        pred = np.asarray(g.curve.predict(COMPUTES))
        np.testing.assert_allclose(pred, law(truth, COMPUTES), rtol=0.02)
        assert len(g.loo) == COMPUTES.size
        assert all(r["abs_err_pp"] < 3.0 for r in g.loo)
        assert [r["direction"] for r in g.loo] == ["below"] + ["inside"] * (COMPUTES.size - 2) + ["above"]
        s = g.loo_summary()  # the cheapest point (a downward extrapolation) is not averaged
        assert s["n"] == COMPUTES.size - 1
        np.testing.assert_allclose(s["mean_abs_err"], np.mean([r["abs_err"] for r in g.loo[1:]]))


def test_json_follows_the_contract(comparisons):
    out = json.loads(json.dumps(comparisons.to_json()))
    g = out["groups"]["new"]
    for key in ("form", "params", "objective", "n_points", "n_frontier", "frontier", "converged_starts",
                "predictions", "heldout"):
        assert key in g
    assert g["form"] == "saturation_both" and set(g["params"]) == {"a", "b", "c", "d"}
    assert len(g["frontier"]) == g["n_frontier"] == COMPUTES.size
    assert [p["compute"] for p in g["predictions"]] == [1e11, 1e12]
    assert all(p["lo"] <= p["error"] <= p["hi"] for p in g["predictions"])
    assert {"comparison", "crossover", "verdict", "fit_seconds", "compile_seconds", "selection"} <= set(out)
    assert len(out["benchmarks"]) == 2 and out["consistency"]["consistent"] is False


def test_swapping_the_groups_flips_the_sign_not_the_verdict(comparisons):
    rep = comparisons.comparisons[0].fit
    swapped = api.compare_fitted(rep, "new", "base", (1e11, 1e12), api.Options())
    orig = comparisons.comparisons[0]
    assert swapped.winner == "new"
    assert swapped.comparison[-1]["diff"] == pytest.approx(-orig.comparison[-1]["diff"])
    assert swapped.crossover["compute"] == pytest.approx(orig.crossover["compute"])


@pytest.fixture(scope="module")
def heldout_fit(table):
    return api.fit(table, benchmark="crossing", pretrain_dataset="synth", lr_scheduler="cosine", groups=["new"],
                   fit_max_compute=1e11, predict=[1e12], bootstrap=0, leave_one_out=False)


def test_heldout_reports_every_frontier_and_best_point_above_the_limit(heldout_fit):
    g = heldout_fit.groups["new"]
    above = COMPUTES[COMPUTES > 1e11]
    assert int(g.fitted.sum()) == int((COMPUTES <= 1e11).sum())
    kinds = {(h["compute"], h["kind"]) for h in g.heldout}
    assert {(float(c), "frontier") for c in above} | {(3e11, "best")} == kinds
    for h in g.heldout:
        pred = float(np.asarray(g.curve.predict([h["compute"]]))[0])
        assert h["predicted"] == pytest.approx(pred)
        assert h["abs_err_pp"] == pytest.approx(100 * abs(pred - h["observed"]))
        assert h["rel_err"] == pytest.approx(abs(pred - h["observed"]) / h["observed"])
        if h["kind"] == "frontier":  # extrapolating a decade from noisy points of the true law
            assert h["abs_err_pp"] < 2.0
    assert g.interval_method == "delta method"
    p = g.predictions[0]
    assert p["lo"] < law(NEW, 1e12) < p["hi"]


def test_allocation_recovers_the_size_and_data_exponents(heldout_fit):
    # C = N * D exactly, so the log-linear slopes of D_opt(C) and N_opt(C) add up to 1.
    a = heldout_fit.groups["new"].allocation
    assert a["N_opt"]["slope"] == pytest.approx(N_EXPONENT, abs=1e-9)
    assert a["D_opt"]["slope"] == pytest.approx(1 - N_EXPONENT, abs=1e-9)
    assert a["N_opt"]["predictions"][0]["value"] == pytest.approx(model_size(1e12), rel=1e-6)
    assert a["D_opt"]["predictions"][0]["value"] == pytest.approx(1e12 / model_size(1e12), rel=1e-6)


def test_summary_prints_the_heldout_table(heldout_fit):
    text = heldout_fit.summary()
    assert "held-out validation: fitted on frontier points with C <= 1e11" in text
    assert "ViT" not in text and "M16" in text  # the held-out rows name their model
    assert "leave-one-out" not in text  # switched off for this fit


def test_too_few_points_names_the_group_and_what_to_do(table):
    with pytest.raises(ResultsError, match="new has 2 frontier points to fit .* 4 parameters.*--fit-max-compute"):
        api.fit(table, benchmark="crossing", pretrain_dataset="synth", groups=["new"], fit_max_compute=2e8,
                bootstrap=0)


def test_bad_arguments(table):
    with pytest.raises(ResultsError, match="at least 20 resamples"):
        api.fit(table, benchmark="crossing", pretrain_dataset="synth", bootstrap=5)
    with pytest.raises(ResultsError, match="unknown group by"):
        api.fit(table, benchmark="crossing", pretrain_dataset="synth", group_by="colour")
    with pytest.raises(ResultsError, match="group\\(s\\) clip have no rows"):
        api.fit(table, benchmark="crossing", pretrain_dataset="synth", groups=["clip"])
    with pytest.raises(ResultsError, match="exactly two groups"):
        api.compare(table, groups=("base",), benchmark="crossing", pretrain_dataset="synth")
