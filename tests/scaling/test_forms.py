"""The form registry: parameter maps, the paper's start grid, overflow safety, bound reporting, bad names."""

import dataclasses
import itertools

import jax
import numpy as np
import pytest

from vlscale.errors import UserError
from vlscale.scaling import forms

EXAMPLE_PARAMS = {
    "saturation_both": {"a": 126.0, "b": 2.3e8, "c": -0.256, "d": 0.104},
    "saturation": {"a": 50.0, "b": 1e8, "c": -0.2},
    "power": {"a": 30.0, "c": -0.15},
    "power_floor": {"a": 40.0, "c": -0.2, "d": 0.1},
    "loglinear": {"alpha": 0.52, "beta": -2.5},
    "chinchilla": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
}


def _natural(name, params, x):
    """The law written in natural parameters, straight from its formula."""
    p = params
    if name == "saturation_both":
        return p["a"] * (x + p["b"]) ** p["c"] + p["d"]
    if name == "saturation":
        return p["a"] * (x + p["b"]) ** p["c"]
    if name == "power":
        return p["a"] * x ** p["c"]
    if name == "power_floor":
        return p["a"] * x ** p["c"] + p["d"]
    if name == "loglinear":
        return np.exp(p["beta"]) * x ** p["alpha"]
    return p["E"] + p["A"] / x[:, 0] ** p["alpha"] + p["B"] / x[:, 1] ** p["beta"]


def _inputs(form):
    if form.n_inputs == 2:
        return np.array([[1e8, 1e9], [3e9, 2e10], [7e10, 1.4e12]])
    return np.geomspace(1e6, 1e13, 8)


def test_registry_holds_every_required_form():
    assert set(forms.FORMS) == set(EXAMPLE_PARAMS)
    assert forms.get_form("chinchilla").n_inputs == 2
    assert forms.get_form("saturation_both").param_names == ("a", "b", "c", "d")
    assert forms.get_form("loglinear").fit_space == "log"


@pytest.mark.parametrize("name", sorted(EXAMPLE_PARAMS))
def test_round_trip_and_predict_match_the_formula(name):
    form = forms.get_form(name)
    params = EXAMPLE_PARAMS[name]
    theta = form.from_params(params)
    assert theta.shape == (form.n_params,)
    back = form.to_params(theta)
    for k, v in params.items():
        assert back[k] == pytest.approx(v, rel=1e-12)
    x = _inputs(form)
    with jax.enable_x64(True):
        got = np.asarray(form.predict(theta, x))
    np.testing.assert_allclose(got, _natural(name, params, x), rtol=1e-10)


def test_paper_grid_is_contained_in_saturation_both_starts():
    form = forms.get_form("saturation_both")
    grid = form.init_grid()
    assert grid.shape == (3200, 4)
    natural = np.array([list(form.to_params(t).values()) for t in grid])
    # Values at the documented floors stand for the paper's zeros.
    natural[:, 0][natural[:, 0] <= forms.A_FLOOR * 1.0000001] = 0.0
    natural[:, 1][natural[:, 1] <= forms.B_FLOOR * 1.0000001] = 0.0
    natural[:, 3][natural[:, 3] <= forms.D_FLOOR * 1.0000001] = 0.0
    paper = np.array(
        list(itertools.product(forms.PAPER_GRID_A, forms.PAPER_GRID_B, forms.PAPER_GRID_C, forms.PAPER_GRID_D))
    )
    assert paper.shape == (3200, 4)
    np.testing.assert_allclose(natural, paper, rtol=1e-9, atol=1e-12)
    assert set(forms.PAPER_GRID_A) == set(range(0, 100, 5))
    assert forms.PAPER_GRID_C == (-0.2, -0.15, -0.1, -0.05) and forms.PAPER_GRID_D == (0.0, 0.0005)


@pytest.mark.parametrize("name", sorted(EXAMPLE_PARAMS))
def test_every_grid_is_finite(name):
    form = forms.get_form(name)
    grid = form.init_grid()
    assert grid.ndim == 2 and grid.shape[1] == form.n_params and len(grid) >= 50
    assert np.all(np.isfinite(grid))


def test_log_space_never_overflows_at_extreme_compute():
    form = forms.get_form("saturation_both")
    # a huge, b tiny, c steep: a naive a * (C + b) ** c in float32 overflows/underflows here.
    theta = form.from_params({"a": 1e30, "b": 0.0, "c": -3.0, "d": 0.0})
    x = np.array([1e6, 1e9, 1e13, 1e16])
    y = np.asarray(form.predict(theta, x))  # default float32 on purpose
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y[1], 1e30 * 1e9**-3.0, rtol=1e-4)


def test_from_params_clips_bounds_to_documented_floors():
    form = forms.get_form("saturation_both")
    theta = form.from_params({"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0})
    np.testing.assert_allclose(np.exp(theta), [forms.A_FLOOR, forms.B_FLOOR, forms.C_FLOOR, forms.D_FLOOR])
    with pytest.raises(UserError, match="missing"):
        form.from_params({"a": 1.0})


def test_at_bound_names_parameters_on_their_constraint():
    form = forms.get_form("saturation_both")
    x = np.geomspace(1e7, 1e11, 10)
    y = np.linspace(0.9, 0.3, 10)
    assert form.at_bound({"a": 80.0, "b": 2e8, "c": -0.23, "d": 0.08}, x, y) == []
    assert form.at_bound({"a": 80.0, "b": 1.0, "c": -0.23, "d": 1e-9}, x, y) == ["b", "d"]


def test_unknown_form_is_a_one_line_user_error_listing_the_choices():
    with pytest.raises(UserError) as err:
        forms.get_form("saturation-both")
    msg = str(err.value)
    assert "\n" not in msg and "saturation_both" in msg and "chinchilla" in msg


def test_custom_forms_must_be_registered():
    custom = forms.Form(
        name="test_power_offset",
        param_names=("a", "c"),
        n_inputs=1,
        formula="a·C^c",
        _predict=forms.POWER._predict,
        _to_natural=forms.POWER._to_natural,
        _from_natural=forms.POWER._from_natural,
        _grid=forms.POWER._grid,
    )
    with pytest.raises(UserError, match="not registered"):
        forms.get_form(custom)
    try:
        assert forms.register_form(custom) is custom
        assert forms.get_form("test_power_offset") is custom and forms.get_form(custom) is custom
        with pytest.raises(UserError, match="already registered"):
            forms.register_form(dataclasses.replace(custom, formula="other"))
    finally:
        forms.FORMS.pop("test_power_offset", None)
