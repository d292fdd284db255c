"""Writers: number formats, text tables, LaTeX, and the files save() puts into OUT/."""

import json

import numpy as np
import pandas as pd
import pytest

from vlscale.scaling import api, report
from tests.scaling.test_api import BASE, NEW, synthetic_table


def test_number_formats():
    assert report.fmt_c(2.59e12) == "2.59e12"
    assert report.fmt_c(7.05e6) == "7.05e6"
    assert report.fmt_c(None) == "-"
    assert report.fmt_p(79.7276) == "79.73"
    assert report.fmt_p(2.0034e8) == "2.003e8"
    assert report.fmt_p(3.1e-14) == "3.100e-14"
    assert report.fmt_err(0.18391, 0.17205, 0.20863) == "0.1839 [0.1721, 0.2086]"
    assert report.fmt_err(0.2, float("nan"), float("nan")) == "0.2000"
    assert report.fmt_pp(-0.0205, -0.0431, 0.0044) == "-2.05 [-4.31, +0.44]"


def test_text_table_aligns_columns():
    text = report.table([["clip", "1.5"], ["mammut", "12.25"]], ["group", "value"], indent="")
    lines = text.splitlines()
    assert lines[0] == "group   value"
    assert lines[1] == "------  -----"
    assert lines[2] == "clip      1.5"
    assert lines[3] == "mammut  12.25"


@pytest.fixture(scope="module")
def small_report():
    """A fit without bootstrap or leave-one-out (only the main fit compiles)."""
    return api.fit(synthetic_table(), benchmark="crossing", pretrain_dataset="synth", lr_scheduler="cosine",
                   predict=[1e12], bootstrap=0, leave_one_out=False, fit_max_compute=1e11)


def test_latex_table_has_one_row_per_group(small_report):
    tex = report.latex_table([small_report])
    assert tex.startswith("\\begin{table}") and "\\begin{tabular}{l" in tex and "\\bottomrule" in tex
    rows = [ln for ln in tex.splitlines() if ln.startswith(("base &", "new &"))]
    assert len(rows) == 2
    a_new = small_report.groups["new"].curve.params["a"]
    assert f"{a_new:.4g}" in rows[1]
    assert "$\\hat E(" in tex and "a\\,(C+b)^{c} + d" in tex


def test_save_writes_all_outputs(small_report, tmp_path):
    paths = small_report.save(tmp_path)
    assert {p.name for p in paths.values()} == {"fit.json", "fit.csv", "fit.tex", "fit.png", "fit.pdf"}
    data = json.loads((tmp_path / "fit.json").read_text())
    assert set(data["groups"]) == {"base", "new"}
    assert data["selection"]["fit_max_compute"] == 1e11 and data["selection"]["bootstrap"] == 0
    assert data["groups"]["new"]["interval"] == "delta method"
    assert data["groups"]["new"]["loo"] == []
    csv = pd.read_csv(tmp_path / "fit.csv")
    assert list(csv["group"]) == ["base", "new"]
    np.testing.assert_allclose(csv["param_d"], [small_report.groups[g].curve.params["d"] for g in ("base", "new")])
    assert {"error@1e12", "lo@1e12", "hi@1e12", "heldout_mean_abs_err_pp"} <= set(csv.columns)
    assert (tmp_path / "fit.pdf").read_bytes()[:4] == b"%PDF"
    assert (tmp_path / "fit.png").stat().st_size > 20_000


def test_summary_lists_parameters_predictions_and_heldout(small_report):
    text = small_report.summary()
    assert text.startswith("== crossing acc1 · synth · cosine ==")
    assert "curve [95% band: delta method]" in text and "prediction interval" in text
    assert "held-out validation" in text
    d_true = {"base": BASE["d"], "new": NEW["d"]}
    for name, g in small_report.groups.items():
        assert g.curve.params["d"] == pytest.approx(d_true[name], abs=0.03)
        assert report.fmt_p(g.curve.params["a"]) in text


def test_json_is_strict_even_with_missing_intervals(tmp_path):
    p = report.write_json({"a": float("nan"), "b": [np.float64(1.5), np.int64(2)], "c": np.array([1.0])},
                          tmp_path / "x.json")
    assert json.loads(p.read_text()) == {"a": None, "b": [1.5, 2], "c": [1.0]}
