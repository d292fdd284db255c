"""Bootstrap and delta-method intervals: shapes, determinism, sanity against known answers, and coverage."""

import jax
import numpy as np
import pytest
from scipy import stats

from vlscale.errors import UserError
import vlscale.scaling.fit as fit  # the package's lazy `fit` attribute is api.fit, not this module
from vlscale.scaling import forms, uncertainty

from .test_forms import EXAMPLE_PARAMS

X = np.geomspace(1e7, 1e11, 14)
PREDICT_AT = np.array([1e11, 4e11, 1e12])


@pytest.fixture(scope="module")
def data():
    form = forms.get_form("saturation_both")
    y_true = np.asarray(form.predict(form.from_params(EXAMPLE_PARAMS["saturation_both"]), X), dtype=np.float64)
    y = y_true * np.exp(0.01 * np.random.default_rng(3).standard_normal(X.size))
    return X, y, fit.fit_curve(X, y)


@pytest.fixture(scope="module")
def boot(data):
    x, y, full = data
    return uncertainty.bootstrap_fit(x, y, n_boot=200, seed=7, predict_at=PREDICT_AT, full_fit=full)


def test_bootstrap_shapes_and_intervals(boot, data):
    assert boot.params.shape == (200, 4)
    assert boot.predictions.shape == (200, 3)
    assert boot.param_names == ("a", "b", "c", "d")
    lo, hi = boot.interval()
    centre = data[2].predict(PREDICT_AT)
    assert np.all(lo < centre) and np.all(centre < hi)
    # Extrapolating further is less certain.
    assert np.all(np.diff(hi - lo) > 0)
    lo90, hi90 = boot.interval(0.9)
    assert np.all(lo90 >= lo) and np.all(hi90 <= hi)
    ci = boot.param_interval()
    assert set(ci) == {"a", "b", "c", "d"}
    assert ci["c"][0] < data[2].params["c"] < ci["c"][1] < 0
    # Every resample's prediction is its parameters' prediction.
    form = forms.get_form("saturation_both")
    assert boot.thetas.shape == (200, 4)
    np.testing.assert_allclose(np.exp(boot.thetas[:, 1]), boot.params[:, 1], rtol=1e-12)
    with jax.enable_x64(True):
        np.testing.assert_allclose(np.asarray(form.predict(boot.thetas[0], PREDICT_AT)), boot.predictions[0], rtol=1e-9)


def test_bootstrap_is_deterministic_per_seed(boot, data):
    x, y, full = data
    again = uncertainty.bootstrap_fit(x, y, n_boot=200, seed=7, predict_at=PREDICT_AT, full_fit=full)
    np.testing.assert_array_equal(again.predictions, boot.predictions)
    other = uncertainty.bootstrap_fit(x, y, n_boot=200, seed=8, predict_at=PREDICT_AT, full_fit=full)
    assert not np.array_equal(other.predictions, boot.predictions)


def test_bootstrap_resamples_are_exact_refits(boot, data):
    """Resample i, refitted on its own with the full multi-start fit, lands on the same optimum."""
    x, y, full = data
    weights = uncertainty.resample_weights(len(x), 200, uncertainty.generator(7, 0))
    for i in (0, 1):
        single = fit.fit_curve(x, y, weights=weights[i])
        np.testing.assert_allclose(single.predict(PREDICT_AT), boot.predictions[i], rtol=1e-6)


def test_resample_weights_are_plain_multiplicities():
    """Never redrawn: the share of resamples with k distinct points of 4 is the textbook occupancy law."""
    w = uncertainty.resample_weights(4, 20000, np.random.default_rng(0))
    assert w.shape == (20000, 4) and np.all(w.sum(axis=1) == 4)
    distinct = np.count_nonzero(w, axis=1)
    # P(k distinct of n=4 draws) = C(4,k) S(4,k) k! / 4^4: 4/256, 84/256, 144/256, 24/256
    for k, p in ((1, 4 / 256), (2, 84 / 256), (3, 144 / 256), (4, 24 / 256)):
        assert np.mean(distinct == k) == pytest.approx(p, abs=0.01)
    # a 3-parameter law is identified (a spare point) only by the resamples with all 4 distinct points
    np.testing.assert_array_equal(uncertainty.identifies(w, 3), distinct == 4)


def test_delta_interval_is_exact_for_a_linear_model():
    """For loglinear (linear regression in log-log space) the delta method is the textbook t-interval."""
    rng = np.random.default_rng(0)
    x = np.geomspace(1e7, 1e11, 14)
    y = np.exp(-2.5 + 0.52 * np.log(x) + 0.05 * rng.standard_normal(x.size))
    result = fit.fit_curve(x, y, "loglinear")
    at = np.array([1e12])
    lo, hi = uncertainty.delta_interval(result, x, y, at, level=0.95)
    design = np.stack([np.log(x), np.ones_like(x)], axis=1)
    coef, rss, *_ = np.linalg.lstsq(design, np.log(y), rcond=None)
    s2 = rss[0] / (x.size - 2)
    g = np.array([np.log(at[0]), 1.0])
    se = np.sqrt(s2 * g @ np.linalg.inv(design.T @ design) @ g)
    t = stats.t.ppf(0.975, x.size - 2)
    centre = g @ coef
    np.testing.assert_allclose([lo[0], hi[0]], np.exp([centre - t * se, centre + t * se]), rtol=1e-6)
    # Not the paper's log(t) multiplier: ours is wider by t / log(t).
    assert np.log(hi[0] / lo[0]) == pytest.approx(2 * t * se, rel=1e-6)


def test_delta_interval_brackets_fit_and_widens(data):
    x, y, full = data
    lo, hi = uncertainty.delta_interval(full, x, y, PREDICT_AT)
    centre = full.predict(PREDICT_AT)
    np.testing.assert_allclose((lo + hi) / 2, centre, rtol=1e-9)
    assert np.all(np.diff(hi - lo) > 0)
    lo80, hi80 = uncertainty.delta_interval(full, x, y, PREDICT_AT, level=0.8)
    assert np.all(hi80 - lo80 < hi - lo)
    with pytest.raises(UserError, match="undetermined: 4 points for 4 parameters"):
        uncertainty.delta_interval(full, x[:4], y[:4], PREDICT_AT)
    with pytest.raises(UserError, match="level"):
        uncertainty.delta_interval(full, x, y, PREDICT_AT, level=95)


def test_bootstrap_bad_options_raise_user_errors(data):
    x, y, full = data
    with pytest.raises(UserError, match="n_boot"):
        uncertainty.bootstrap_fit(x, y, n_boot=0, full_fit=full)
    with pytest.raises(UserError, match="level"):
        uncertainty.bootstrap_fit(x, y, n_boot=10, level=1.5, full_fit=full)
    with pytest.raises(UserError, match="predict_at"):
        uncertainty.bootstrap_fit(x, y, n_boot=10, predict_at=[-1.0], full_fit=full)
    with pytest.raises(UserError, match="undetermined: 4 points for 4 parameters"):
        uncertainty.bootstrap_fit(x[:4], y[:4], n_boot=10)


def test_delta_difference_uses_welch_satterthwaite_dof():
    from scipy import stats

    from vlscale.scaling.uncertainty import difference_half_width

    # equal variances and dof: the sum has twice the dof
    np.testing.assert_allclose(difference_half_width(0.01, 6, 0.01, 6, 0.95),
                               stats.t.ppf(0.975, 12) * np.sqrt(2) * 0.01, rtol=1e-10)
    # one exact curve: only the other's dof
    np.testing.assert_allclose(difference_half_width(0.02, 5, 0.0, 9, 0.95), stats.t.ppf(0.975, 5) * 0.02, rtol=1e-10)
    # vectorised over a grid, and never below the smaller dof's quantile
    se_a, se_b = np.array([0.01, 0.03]), np.array([0.02, 0.001])
    half = difference_half_width(se_a, 6, se_b, 8, 0.95)
    total = np.sqrt(se_a ** 2 + se_b ** 2)
    assert half.shape == (2,) and np.all(half <= stats.t.ppf(0.975, 6) * total)
    assert np.all(half >= stats.t.ppf(0.975, 14) * total)
