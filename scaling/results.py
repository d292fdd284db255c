"""The results table as the fitter reads it: loading, validation, selection and the error rate.

The table every scaling-law tool reads and our evaluation code writes: one row per evaluated checkpoint, long format, the same columns as the paper's published table
(``laion_scaling_results.csv``, see ``../shared/data/README.md``).

The columns are ``vlscale.runtime.results_schema``'s (the module evaluation writes with).

Errors found here are ``ResultsError`` (a ``UserError``): one line naming the column or row and what to do.
"""

from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from vlscale.runtime import csv_cells
from vlscale.errors import UserError
from vlscale.scaling import metrics as metrics_lib
from vlscale.scaling.options import PAPER_MAX_SAMPLES_SEEN, PAPER_MIN_COMPUTE  # noqa: F401 (re-exported)

from vlscale.runtime.results_schema import (  # noqa: F401 (the schema, re-exported for the fitter's readers)
    IDENTITY_COLUMNS,
    NUMERIC_COLUMNS,
    OPTIONAL_COLUMNS,
    POSITIVE_COLUMNS,
    REQUIRED_COLUMNS,
    TEXT_COLUMNS,
)

# Compute axes a fit may use (x).
COMPUTE_COLUMNS = ("compute_gflops_actual", "compute_gflops", "samples_seen_actual", "samples_seen")

# The paper's main metric per benchmark (scaling_laws/constants.py `metric_map` of the paper's code).
DEFAULT_METRIC = {
    "imagenet1k": "acc1",
    "mscoco_captions": "image_retrieval_recall@5",
    "datacomp_classification": "acc1",
    "imagenet_distribution_shift": "acc1",
    "ade20k": "miou",
}

class ResultsError(UserError):
    """A results table that cannot be used as given (bad file, column, row or selection)."""


class ResultsWarning(UserWarning):
    """Something in a table that is probably a mistake but does not stop a fit (e.g. a misspelled column)."""


# A column this close (difflib ratio) to a known one is probably a misspelling of it.
COLUMN_SIMILARITY = 0.85


def metric_kind(metric: str) -> str:
    """``"accuracy"`` (error = 1 - value), ``"loss"`` (error = value) or ``"score"`` (see ``scaling.metrics``)."""
    try:
        return metrics_lib.metric_kind(metric)
    except UserError as e:
        raise ResultsError(str(e)) from None


def error_rate(values: np.ndarray | pd.Series, metric: str) -> np.ndarray:
    """The quantity scaling laws fit: 1 - value for scores, the value itself for losses (see ``scaling.metrics``)."""
    try:
        m = metrics_lib.get_metric(metric)
    except UserError as e:
        raise ResultsError(str(e)) from None
    return np.asarray(m.error(np.asarray(values, dtype=np.float64)), dtype=np.float64)


def _separator(p: Path) -> str:
    """',' unless the header line is clearly split by ';' or tabs (a spreadsheet export in some locales)."""
    try:
        with open(p, "r", errors="replace") as fh:
            head = fh.readline()
    except OSError:
        return ","
    counts = {sep: head.count(sep) for sep in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] > counts[","] else ","


def load_results(path: str | Path) -> pd.DataFrame:
    """Reads a CSV or parquet results table and validates it (``validate_results``)."""
    p = Path(path)
    if not p.is_file():
        raise ResultsError(f"results table {p} does not exist; pass the path of a CSV or parquet file")
    suffixes = "".join(p.suffixes).lower()
    try:
        if suffixes.endswith((".parquet", ".pq")):
            df = pd.read_parquet(p)
        elif suffixes.endswith(".tsv"):
            df = pd.read_csv(p, sep="\t")
        elif suffixes.endswith(".csv"):
            df = pd.read_csv(p, sep=_separator(p))
        elif suffixes.endswith(".csv.gz"):
            df = pd.read_csv(p)
        else:
            raise ResultsError(f"results table {p} is neither .csv nor .parquet; convert it or rename it")
    except ResultsError:
        raise
    except Exception as e:  # parser errors from pandas/pyarrow: say which file, in one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ResultsError(f"could not read results table {p}: {msg}") from None
    if not suffixes.endswith((".parquet", ".pq")):
        csv_cells.restore_frame(df)  # text cells we wrote with a leading ' (formula neutralisation) read back bare
    return validate_results(df, source=str(p))


def _row_label(df: pd.DataFrame, i: int, source: str | None) -> str:
    """Names row i the way a user finds it: the file line for CSVs (header is line 1), else the 0-based row."""
    if source and source.lower().endswith((".csv", ".csv.gz", ".tsv")):
        return f"line {i + 2} of {source}"
    return f"row {i}" + (f" of {source}" if source else "")


def validate_results(df: pd.DataFrame, *, source: str | None = None) -> pd.DataFrame:
    """Checks the schema and values; returns a clean copy (numeric dtypes, fresh 0..n-1 index).

    Raises ``ResultsError`` for a missing column, a non-numeric or NaN entry, non-positive compute, an accuracy
    outside [0, 1] or duplicate rows, naming the column/row and what to do.
    """
    where = f" in {source}" if source else ""
    if not isinstance(df, pd.DataFrame):
        raise ResultsError(f"expected a pandas DataFrame of results, got {type(df).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ResultsError(
            f"results table{where} lacks column(s) {', '.join(missing)}; required columns are "
            f"{', '.join(REQUIRED_COLUMNS)}"
        )
    if len(df) == 0:
        raise ResultsError(f"results table{where} has no rows")
    _warn_close_columns(df.columns, where)
    df = df.reset_index(drop=True).copy()
    for col in TEXT_COLUMNS:
        bad = df[col].isna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ResultsError(f"column {col} is empty at {_row_label(df, i, source)}; fill it in or drop the row")
        df[col] = df[col].astype(str)
    for col in NUMERIC_COLUMNS:
        if col not in df.columns:
            continue
        num = pd.to_numeric(df[col], errors="coerce")
        bad_text = num.isna() & df[col].notna()
        if bad_text.any():
            i = int(np.flatnonzero(bad_text.to_numpy())[0])
            raise ResultsError(
                f"column {col} holds non-number {df[col].iloc[i]!r} at {_row_label(df, i, source)}; "
                "write plain numbers like 1.28e9"
            )
        optional = col in OPTIONAL_COLUMNS
        if num.isna().any() and not (optional and col in ("lr", "global_batch_size", "warmup", "step")):
            i = int(np.flatnonzero(num.isna().to_numpy())[0])
            raise ResultsError(
                f"column {col} is NaN at {_row_label(df, i, source)}; fill it in or drop the row"
            )
        df[col] = num.astype(np.float64)
        if col in POSITIVE_COLUMNS:
            bad = ~(num > 0) & num.notna()
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise ResultsError(
                    f"column {col} must be > 0 but is {num.iloc[i]:g} at {_row_label(df, i, source)}; "
                    "fix the compute/samples of that row or drop it"
                )
        if not np.isfinite(num.dropna().to_numpy()).all():
            i = int(np.flatnonzero(~np.isfinite(num.fillna(0).to_numpy()))[0])
            raise ResultsError(f"column {col} is infinite at {_row_label(df, i, source)}; fix or drop the row")
    # Unknown metrics are checked only when a fit selects them (select -> error_rate names how to declare one).
    known = {m: metrics_lib.lookup(m) for m in df["metric"].unique()}
    lo = df["metric"].map({m: (k.value_range[0] if k else -np.inf) for m, k in known.items()}).to_numpy(np.float64)
    hi = df["metric"].map({m: (k.value_range[1] if k else np.inf) for m, k in known.items()}).to_numpy(np.float64)
    v = df["value"].to_numpy()
    out = (v < lo) | (v > hi)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        hint = " (looks like a percentage: divide by 100)" if 1 < v[i] <= 100 else ""
        raise ResultsError(
            f"value {v[i]:g} of {known[df['metric'].iloc[i]].kind} metric {df['metric'].iloc[i]} is outside "
            f"[{lo[i]:g}, {hi[i]:g}] at {_row_label(df, i, source)}{hint}"
        )
    ident = [c for c in IDENTITY_COLUMNS if c in df.columns]
    later = np.flatnonzero(df.duplicated(subset=ident, keep="first").to_numpy())
    if len(later):
        second = int(later[0])
        keys = pd.util.hash_pandas_object(df[ident], index=False).to_numpy()
        first = int(np.flatnonzero(keys == keys[second])[0])
        raise ResultsError(
            f"duplicate rows: {_row_label(df, first, source)} and {_row_label(df, second, source)} are the same "
            f"checkpoint ({df['model_type'].iloc[first]} {df['model'].iloc[first]}, "
            f"{df['samples_seen'].iloc[first]:g} samples, {df['downstream_dataset'].iloc[first]} "
            f"{df['metric'].iloc[first]}); drop one, or add a 'run'/'step' column that tells them apart"
        )
    return df


def _warn_close_columns(columns, where: str) -> None:
    known = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    for col in columns:
        if col in known or not isinstance(col, str):
            continue
        close = difflib.get_close_matches(col, known, n=1, cutoff=COLUMN_SIMILARITY)
        if close:
            warnings.warn(f"column {col!r}{where} is not a known column; did you mean {close[0]!r}? "
                          f"(it is ignored as spelled)", ResultsWarning, stacklevel=3)


@dataclass(frozen=True)
class Selection:
    """Which rows of a results table one fit uses. ``None`` means "no filter" for that field.

    ``model_types``/``models`` keep rows of those families/architectures; ``min_compute``/``max_compute`` drop rows
    (on the ``x`` axis) before the frontier is built; ``max_samples_seen`` uses the actual samples when the table has
    them (the paper's ``total_samples_seen``).
    """

    downstream_dataset: str | None = None
    metric: str | None = None
    pretrain_dataset: str | None = None
    lr_scheduler: str | None = None
    model_types: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    min_compute: float | None = None
    max_compute: float | None = None
    max_samples_seen: float | None = None
    x: str | None = None  # None: compute_gflops_actual when the table has it, else compute_gflops

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("model_types", "models"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    def label(self) -> str:
        """Short human label, e.g. ``imagenet1k acc1 · datacomp_1b · cosine``."""
        parts = [p for p in (self.downstream_dataset, self.metric) if p]
        head = " ".join(parts) or "all benchmarks"
        rest = [p for p in (self.pretrain_dataset, self.lr_scheduler) if p]
        if self.model_types and len(self.model_types) == 1:
            rest.append(self.model_types[0])
        return " · ".join([head, *rest])


def _one_value(df: pd.DataFrame, col: str, flag: str) -> str:
    vals = sorted(df[col].unique())
    if len(vals) != 1:
        raise ResultsError(
            f"the selection mixes several {col} values ({', '.join(vals)}); choose one with {flag}"
        )
    return vals[0]


def _filter_eq(df: pd.DataFrame, col: str, wanted: Iterable[str] | str | None, flag: str) -> pd.DataFrame:
    if wanted is None:
        return df
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    have = set(df[col].unique())
    unknown = [w for w in wanted if w not in have]
    if unknown:
        raise ResultsError(
            f"{flag} {','.join(unknown)} not found in column {col}; available here: {', '.join(sorted(have)) or 'none'}"
        )
    return df[df[col].isin(wanted)]


def resolve_metric(df: pd.DataFrame, downstream_dataset: str | None, metric: str | None) -> str | None:
    """The metric to use: the given one, the only one present, or the paper's default for the benchmark."""
    if metric is not None:
        return metric
    sub = df if downstream_dataset is None else df[df["downstream_dataset"] == downstream_dataset]
    present = sorted(sub["metric"].unique())
    if len(present) == 1:
        return present[0]
    default = DEFAULT_METRIC.get(downstream_dataset or "")
    if default in present:
        return default
    return None


def resolve_x(df: pd.DataFrame, x: str | None) -> str:
    """The compute column to use: ``x``, or by default the actual compute when present, else the nominal one."""
    if x is None:
        x = "compute_gflops_actual" if "compute_gflops_actual" in df.columns else "compute_gflops"
    if x not in df.columns:
        alt = [c for c in COMPUTE_COLUMNS if c in df.columns]
        raise ResultsError(f"compute column {x} is not in the results table; use --x with one of {', '.join(alt)}")
    return x


def select(df: pd.DataFrame, sel: Selection) -> pd.DataFrame:
    """Rows of a validated table that ``sel`` keeps, with two added columns: ``x`` (compute axis) and ``error``.

    Raises ``ResultsError`` when the selection is empty, ambiguous (several benchmarks/metrics/datasets/schedulers
    left) or names a value or column the table does not have.
    """
    x_col = resolve_x(df, sel.x)
    out = df
    out = _filter_eq(out, "downstream_dataset", sel.downstream_dataset, "--benchmark")
    metric = resolve_metric(out, sel.downstream_dataset, sel.metric)
    out = _filter_eq(out, "metric", metric, "--metric")
    out = _filter_eq(out, "pretrain_dataset", sel.pretrain_dataset, "--pretrain-dataset")
    out = _filter_eq(out, "lr_scheduler", sel.lr_scheduler, "--lr-scheduler")
    out = _filter_eq(out, "model_type", sel.model_types, "--model-types")
    out = _filter_eq(out, "model", sel.models, "--models")
    for col, flag in (
        ("downstream_dataset", "--benchmark"),
        ("metric", "--metric"),
        ("pretrain_dataset", "--pretrain-dataset"),
        ("lr_scheduler", "--lr-scheduler"),
    ):
        _one_value(out, col, flag)
    x = out[x_col].to_numpy()
    keep = np.ones(len(out), dtype=bool)
    if sel.min_compute is not None:
        keep &= x >= sel.min_compute
    if sel.max_compute is not None:
        keep &= x <= sel.max_compute
    if sel.max_samples_seen is not None:
        samples_col = "samples_seen_actual" if "samples_seen_actual" in out.columns else "samples_seen"
        keep &= out[samples_col].to_numpy() <= sel.max_samples_seen
    out = out[keep]
    if len(out) == 0:
        raise ResultsError(
            f"no rows left for {sel.label()} after the compute/samples limits; widen --min-compute/--max-compute/"
            "--max-samples-seen"
        )
    out = out.copy()
    out["x"] = out[x_col].astype(np.float64)
    out["error"] = error_rate(out["value"], out["metric"].iloc[0])
    return out


def parse_float_list(text: str | Sequence[float] | None) -> tuple[float, ...]:
    """``"2.14e12,2.59e12"`` -> ``(2.14e12, 2.59e12)``; a bad item raises ResultsError naming it."""
    if text is None:
        return ()
    if not isinstance(text, str):
        return tuple(float(t) for t in text)
    out = []
    for item in text.replace(" ", ",").split(","):
        if not item:
            continue
        try:
            v = float(item)
        except ValueError:
            raise ResultsError(f"{item!r} is not a number; give compute values like 2.14e12,2.59e12") from None
        if not math.isfinite(v) or v <= 0:
            raise ResultsError(f"compute value {item} must be a positive finite number")
        out.append(v)
    return tuple(out)
