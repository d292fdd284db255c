"""The results schema: loading, one-line validation errors, selection and the error rate."""

import numpy as np
import pandas as pd
import pytest

from vlscale.errors import UserError
from vlscale.scaling import results as R


def _table(n=4, **overrides):
    rows = []
    for i in range(n):
        samples = 1e6 * 10 ** i
        rows.append(dict(pretrain_dataset="ds", lr_scheduler="cosine", downstream_dataset="imagenet1k", metric="acc1",
                         model_type="clip", model=f"M{i}", samples_seen=samples, gflops_per_sample=10.0,
                         compute_gflops=10.0 * samples, value=0.1 + 0.1 * i))
    df = pd.DataFrame(rows)
    for k, v in overrides.items():
        df[k] = v
    return df


def test_published_table_loads_and_validates(shared_data):
    df = R.load_results(shared_data / "laion_scaling_results.csv")
    assert len(df) == 2686
    assert set(R.REQUIRED_COLUMNS) <= set(df.columns)
    assert df["value"].between(0, 1).all()


def test_metric_kinds_and_error_rate():
    assert R.metric_kind("acc1") == "accuracy"
    assert R.metric_kind("image_retrieval_recall@5") == "accuracy"
    assert R.metric_kind("miou") == "accuracy"
    assert R.metric_kind("contrastive_loss") == "loss"
    np.testing.assert_allclose(R.error_rate([0.25, 0.8], "acc1"), [0.75, 0.2])
    np.testing.assert_allclose(R.error_rate([2.5, 0.8], "caption_loss"), [2.5, 0.8])
    with pytest.raises(R.ResultsError, match="unknown.*register_metric"):
        R.metric_kind("bleu_score")


def test_missing_column_is_named():
    with pytest.raises(R.ResultsError, match="lacks column\\(s\\) compute_gflops") as e:
        R.validate_results(_table().drop(columns=["compute_gflops"]), source="t.csv")
    assert "\n" not in str(e.value)


def test_nan_value_names_column_and_csv_line(tmp_path):
    df = _table()
    df.loc[2, "value"] = np.nan
    p = tmp_path / "r.csv"
    df.to_csv(p, index=False)
    with pytest.raises(R.ResultsError, match=f"column value is NaN at line 4 of {p}"):
        R.load_results(p)


def test_non_numeric_and_non_positive_compute():
    df = _table()
    df["compute_gflops"] = df["compute_gflops"].astype(object)
    df.loc[1, "compute_gflops"] = "lots"
    with pytest.raises(R.ResultsError, match="non-number 'lots' at row 1"):
        R.validate_results(df)
    df = _table()
    df.loc[3, "compute_gflops"] = 0.0
    with pytest.raises(R.ResultsError, match="compute_gflops must be > 0 but is 0 at row 3"):
        R.validate_results(df)


def test_accuracy_outside_unit_interval_hints_at_percent():
    df = _table()
    df.loc[0, "value"] = 55.0
    with pytest.raises(R.ResultsError, match="outside \\[0, 1\\].*divide by 100"):
        R.validate_results(df)
    # losses may exceed 1
    df["metric"] = "contrastive_loss"
    assert len(R.validate_results(df)) == 4


def test_duplicate_rows_are_named_and_run_column_separates_them():
    df = pd.concat([_table(), _table().iloc[[1]]], ignore_index=True)
    with pytest.raises(R.ResultsError, match="duplicate rows: row 1 and row 4 .*add a 'run'"):
        R.validate_results(df)
    df["run"] = ["a", "a", "a", "a", "b"]
    assert len(R.validate_results(df)) == 5


def test_empty_text_cell_and_empty_table():
    df = _table()
    df.loc[2, "model"] = None
    with pytest.raises(R.ResultsError, match="column model is empty at row 2"):
        R.validate_results(df)
    with pytest.raises(R.ResultsError, match="no rows"):
        R.validate_results(_table().iloc[:0])


def test_parquet_round_trip_and_bad_suffix(tmp_path):
    df = _table()
    df.to_parquet(tmp_path / "r.parquet")
    back = R.load_results(tmp_path / "r.parquet")
    pd.testing.assert_frame_equal(back, R.validate_results(df))
    (tmp_path / "r.txt").write_text("x")
    with pytest.raises(R.ResultsError, match="neither .csv nor .parquet"):
        R.load_results(tmp_path / "r.txt")
    with pytest.raises(R.ResultsError, match="does not exist"):
        R.load_results(tmp_path / "missing.csv")


def test_select_filters_and_adds_x_and_error(shared_data):
    df = R.load_results(shared_data / "laion_scaling_results.csv")
    sel = R.Selection("imagenet1k", None, "datacomp_1b", "cosine", ("clip", "mammut"), min_compute=1e6,
                      max_samples_seen=1e10)
    out = R.select(df, sel)
    assert set(out["model_type"]) == {"clip", "mammut"}
    assert (out["metric"] == "acc1").all()  # the paper's default metric for imagenet1k
    assert len(out) == 142 + 146
    np.testing.assert_allclose(out["error"], 1 - out["value"])
    np.testing.assert_allclose(out["x"], out["compute_gflops_actual"])
    capped = R.select(df, R.Selection("imagenet1k", "acc1", "datacomp_1b", "cosine", ("clip",),
                                      max_compute=1e10, max_samples_seen=1e8))
    assert capped["x"].max() <= 1e10 and capped["samples_seen_actual"].max() <= 1e8


def test_select_errors_name_the_flag_and_the_choices(shared_data):
    df = R.load_results(shared_data / "laion_scaling_results.csv")
    with pytest.raises(R.ResultsError, match="--benchmark imgnet not found.*imagenet1k"):
        R.select(df, R.Selection("imgnet"))
    with pytest.raises(R.ResultsError, match="several pretrain_dataset values .*--pretrain-dataset"):
        R.select(df, R.Selection("imagenet1k", "acc1", lr_scheduler="cosine"))
    coco = R.select(df, R.Selection("mscoco_captions", None, "datacomp_1b", "cosine"))
    assert set(coco["metric"]) == {"image_retrieval_recall@5"}  # the paper's default for the benchmark
    two = pd.concat([_table(), _table(metric="acc5")], ignore_index=True)
    two["downstream_dataset"] = "mybench"
    with pytest.raises(R.ResultsError, match=r"several metric values \(acc1, acc5\); choose one with --metric"):
        R.select(R.validate_results(two), R.Selection("mybench"))
    with pytest.raises(R.ResultsError, match="no rows left"):
        R.select(df, R.Selection("imagenet1k", "acc1", "datacomp_1b", "cosine", min_compute=1e15))
    with pytest.raises(R.ResultsError, match="compute column flops is not in the results table"):
        R.select(df, R.Selection("imagenet1k", x="flops"))
    assert isinstance(R.ResultsError("x"), UserError)


def test_parse_float_list():
    assert R.parse_float_list("2.14e12, 2.59e12") == (2.14e12, 2.59e12)
    assert R.parse_float_list(None) == ()
    with pytest.raises(R.ResultsError, match="'abc' is not a number"):
        R.parse_float_list("1e9,abc")
    with pytest.raises(R.ResultsError, match="positive"):
        R.parse_float_list("-1")
