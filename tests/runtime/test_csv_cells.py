"""CSV outputs neutralise cells a spreadsheet would run as formulas, and our readers get the original text back."""

import csv

import pandas as pd
import pytest

from vlscale.runtime import csv_cells
from vlscale.cli import main
from vlscale.eval import results as eval_results
from vlscale.eval.results import append_new_rows  # the generic writer (vlscale.outputs), as eval imports it
from vlscale.scaling.results import load_results

HOSTILE = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1:A2)", "\tcmd", "\rcmd", "'=already quoted",
           "''@two quotes"]
PLAIN = ["clip", "'quoted text", "a=b", "", "-", "-0.25", "+3", "-1e-3", "1.28e9", "-inf", "NaN"]


@pytest.mark.parametrize("text", HOSTILE + PLAIN)
def test_neutralise_then_restore_is_the_identity(text):
    written = csv_cells.neutralise(text)
    assert csv_cells.restore(written) == text
    if text in HOSTILE:
        assert written == "'" + text
    elif text not in ("-",):  # a lone "-" is not a number: quoted too (Excel reads it as an unfinished formula)
        assert written == text


def test_lone_sign_is_quoted_and_numbers_are_never_touched():
    assert csv_cells.neutralise("-") == "'-"
    for v in (-0.5, -3, float("-inf"), 2.0):
        assert csv_cells.neutralise(v) == v


def test_append_rows_quotes_formulas_keeps_negative_numbers_and_reads_back(tmp_path):
    path = tmp_path / "t.csv"
    key = lambda r: r["name"]  # noqa: E731
    append_new_rows(path, [{"name": "=1+2", "x": -0.5, "y": "-7"}], key)
    append_new_rows(path, [{"name": "@A1", "x": 1.5, "y": "ok"}], key)  # the old row is rewritten: quoted once
    raw = path.read_text().splitlines()
    assert raw == ["name,x,y", "'=1+2,-0.5,-7", "'@A1,1.5,ok"]
    with open(path, newline="") as f:
        rows = [csv_cells.restore_row(r) for r in csv.DictReader(f)]
    assert [r["name"] for r in rows] == ["=1+2", "@A1"] and rows[0]["x"] == "-0.5"


def _identity(run):
    return {"pretrain_dataset": "+laion", "lr_scheduler": "cosine", "model": "ViT-B-32", "model_type": "clip",
            "samples_seen": 1e6, "gflops_per_sample": 4.4, "compute_gflops": 4.4e6, "samples_seen_actual": 1e6,
            "compute_gflops_actual": 4.4e6, "lr": -1e-3,
            "global_batch_size": 32, "warmup": 0, "run": run, "step": 10}


def test_results_table_round_trip_and_identity_dedup_through_the_quotes(tmp_path):
    table = tmp_path / "results.csv"
    rows = eval_results.rows_for(_identity("=cmd|' /C calc'!A0"), "-synth", {"acc1": 0.5, "acc5": 0.75})
    assert eval_results.append_rows(table, rows) == 2
    text = table.read_text()
    assert "'=cmd|" in text and "'+laion" in text and "'-synth" in text and ",-0.001," in text
    assert eval_results.append_rows(table, rows) == 0  # the same rows read back equal the new ones
    assert eval_results.has_rows(table, "=cmd|' /C calc'!A0", 10, "-synth")
    df = load_results(table)
    assert set(df["run"]) == {"=cmd|' /C calc'!A0"} and set(df["pretrain_dataset"]) == {"+laion"}
    assert set(df["downstream_dataset"]) == {"-synth"} and set(df["lr"]) == {-1e-3}
    assert df["lr"].dtype == float and df["value"].tolist() == [0.5, 0.75]


def test_study_collect_results_keeps_the_table_byte_identical(tmp_path):
    from vlscale.study import layout, runner
    from vlscale.study.plan import Plan

    table = layout.run_dir(tmp_path, "r") / layout.RESULTS_FILE
    eval_results.append_rows(table, eval_results.rows_for(_identity("@r"), "=x", {"acc1": 0.5}))

    class OneRun:
        name = "r"

    plan = Plan.__new__(Plan)
    object.__setattr__(plan, "runs", (OneRun(),))
    runner.collect_results(plan, tmp_path)
    first = (tmp_path / layout.RESULTS_FILE).read_text()
    assert "'@r" in first and "''@r" not in first and "'=x" in first
    assert set(load_results(tmp_path / layout.RESULTS_FILE)["run"]) == {"@r"}


def test_fit_csv_quotes_a_formula_like_benchmark_name(tmp_path, capsys):
    from tests.scaling.test_api import synthetic_table

    df = synthetic_table()
    df = df[(df["downstream_dataset"] == "crossing") & (df["model_type"] == "new")].copy()
    df["downstream_dataset"] = "=crossing"
    df.to_csv(tmp_path / "t.csv", index=False)
    rc = main(["fit", str(tmp_path / "t.csv"), "--benchmark", "=crossing", "--bootstrap", "0", "--no-loo", "--quiet",
               "--out", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr().err
    fit = (tmp_path / "out" / "fit.csv").read_text().splitlines()
    assert fit[1].startswith("'=crossing,acc1,,,new,saturation_both,"), fit[1]
    back = csv_cells.restore_frame(pd.read_csv(tmp_path / "out" / "fit.csv"))
    assert back["benchmark"].tolist() == ["=crossing"] and back["n_points"].dtype.kind in "if"
