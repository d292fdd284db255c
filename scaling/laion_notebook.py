"""Rebuilds the paper's published results table from ``overview.ipynb`` of LAION-AI/scaling-laws-for-comparison.

The notebook's code cell 2 displays 13 tables as pairs of outputs: an HTML title naming the benchmark, metric,
pre-training dataset and scheduler, then a ``pandas.Styler`` HTML table (rows ``<model_type>_<model>``, columns
nominal samples seen like ``1.28M`` / ``3B``, cells 3-decimal values or ``NA``). Each non-``NA`` cell becomes one
row of the long table in ``vlscale.scaling.results`` format, in notebook order (table, row, column), with
``gflops_per_sample`` from the repository's ``model_profile.csv``. This is how ``laion_scaling_results.csv`` in the
shared data was built (see its README).

Parsing is offline and stdlib-only; only ``download_sources`` touches the network.
"""

from __future__ import annotations

import csv
import io
import json
import re
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd

from vlscale.runtime import csv_cells
from vlscale.errors import UserError
from vlscale.scaling.results import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, validate_results

# The repository and commit the shared table was built from (../shared/data/README.md).
LAION_REPO = "LAION-AI/scaling-laws-for-comparison"
LAION_COMMIT = "5343917d5712c1ebdcae8d0105f16036fc894795"
RAW_URL = "https://raw.githubusercontent.com/{repo}/{ref}/{path}"
NOTEBOOK_PATH = "overview.ipynb"
MODEL_PROFILE_PATH = "model_profile.csv"
DOWNLOAD_TIMEOUT_S = 30.0

# Runs at the 3M/30M/300M/3B scales saw 2.4% more samples than the column header says; the notebook's `human()`
# rounds to the nominal scale. Mapping read from segmentation_results.parquet (../shared/data/README.md).
ACTUAL_SAMPLES_SEEN = {3e6: 3.072e6, 3e7: 3.072e7, 3e8: 3.072e8, 3e9: 3.072e9}

OUTPUT_COLUMNS = REQUIRED_COLUMNS + ("samples_seen_actual", "compute_gflops_actual")
assert set(OUTPUT_COLUMNS[len(REQUIRED_COLUMNS):]) <= set(OPTIONAL_COLUMNS)

TITLE_RE = re.compile(
    r"<font color='green'>'(?P<downstream>[^']+)'</font>\s*(?P<metric>\S+)\s+results for models pre-trained on\s+"
    r"<font color='red'>'(?P<pretrain>[^']+)'</font>\s+using scheduler\s+<font color='blue'>'(?P<scheduler>[^']+)'</font>"
)
SCALE_SUFFIX = {"K": 1e3, "M": 1e6, "B": 1e9}


class NotebookError(UserError):
    """The notebook or model profile does not have the expected structure."""


def samples_from_label(label: str) -> float:
    """``"1.28M"`` -> 1.28e6, ``"3B"`` -> 3e9 (the notebook's column headers)."""
    label = label.strip()
    try:
        if label[-1:] in SCALE_SUFFIX:
            return float(label[:-1]) * SCALE_SUFFIX[label[-1]]
        return float(label)
    except ValueError:
        raise NotebookError(f"column header {label!r} is not a samples-seen scale like 1.28M or 3B") from None


class _TableParser(HTMLParser):
    """Collects the header cells and the (row label, cells) of one HTML table."""

    def __init__(self):
        super().__init__()
        self.header: list[str] = []
        self.rows: list[tuple[str, list[str]]] = []
        self._section = None
        self._cell: list[str] | None = None
        self._cell_kind = None
        self._row: list[tuple[str, str]] | None = None

    def handle_starttag(self, tag, attrs):
        if tag in ("thead", "tbody"):
            self._section = tag
        elif tag == "tr":
            self._row = []
        elif tag in ("th", "td"):
            self._cell, self._cell_kind = [], tag

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None and self._row is not None:
            self._row.append((self._cell_kind, "".join(self._cell).strip()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._section == "thead":
                self.header = [text for _, text in self._row[1:]]  # first th is the index name
            elif self._row:
                label = self._row[0][1]
                self.rows.append((label, [text for _, text in self._row[1:]]))
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _output_html(output: dict) -> str:
    data = output.get("data", {}) if isinstance(output, dict) else {}
    html = data.get("text/html", "")
    return "".join(html) if isinstance(html, list) else str(html)


def read_model_profile(source) -> dict[str, float]:
    """``model_simple_namespace`` -> GFLOPs per sample, from model_profile.csv (a Path, a path string, or its text)."""
    is_path = isinstance(source, Path) or (isinstance(source, str) and "\n" not in source)
    text = Path(source).read_text() if is_path else str(source)
    reader = csv.DictReader(io.StringIO(text))
    need = {"model_simple_namespace", "gflops"}
    if reader.fieldnames is None or not need <= set(reader.fieldnames):
        raise NotebookError(f"model profile lacks columns {sorted(need)}; pass the repository's {MODEL_PROFILE_PATH}")
    return {row["model_simple_namespace"]: float(row["gflops"]) for row in reader}


def parse_notebook(notebook: dict | str | Path, model_profile: dict[str, float]) -> pd.DataFrame:
    """The long results table from a notebook (parsed JSON, JSON text or a path) and a model profile mapping."""
    if isinstance(notebook, Path) or (isinstance(notebook, str) and not notebook.lstrip().startswith("{")
                                      and "\n" not in notebook):
        notebook = Path(notebook).read_text()
    if isinstance(notebook, str):
        try:
            notebook = json.loads(notebook)
        except json.JSONDecodeError as e:
            raise NotebookError(f"notebook is not valid JSON ({e.msg} at line {e.lineno}); download it again") from None
    records: list[dict] = []
    n_tables = 0
    for cell in notebook.get("cells", []):
        title = None
        for output in cell.get("outputs", []):
            html = _output_html(output)
            m = TITLE_RE.search(html)
            if m:
                title = m.groupdict()
                continue
            if title is not None and "<table" in html:
                records.extend(_table_records(html, title, model_profile))
                n_tables += 1
                title = None
    if not records:
        raise NotebookError(
            "found no results tables (title + HTML table outputs) in the notebook; is it the executed overview.ipynb "
            f"of {LAION_REPO}?"
        )
    df = pd.DataFrame.from_records(records, columns=list(OUTPUT_COLUMNS))
    return validate_results(df, source="overview.ipynb")


def _table_records(html: str, title: dict, model_profile: dict[str, float]) -> list[dict]:
    parser = _TableParser()
    parser.feed(html)
    samples = [samples_from_label(h) for h in parser.header]
    out = []
    for label, cells in parser.rows:
        model_type, _, model = label.partition("_")
        if not model:
            raise NotebookError(f"row label {label!r} is not <model_type>_<model>")
        key = f"{model}_{model_type}"
        if key not in model_profile:
            raise NotebookError(f"model {key} is not in the model profile; pass the matching {MODEL_PROFILE_PATH}")
        gflops = model_profile[key]
        if len(cells) != len(samples):
            raise NotebookError(f"row {label!r} has {len(cells)} cells for {len(samples)} columns")
        for s, text in zip(samples, cells):
            if text in ("NA", "", "nan"):
                continue
            actual = ACTUAL_SAMPLES_SEEN.get(s, s)
            out.append(
                {
                    "pretrain_dataset": title["pretrain"],
                    "lr_scheduler": title["scheduler"],
                    "downstream_dataset": title["downstream"],
                    "metric": title["metric"],
                    "model_type": model_type,
                    "model": model,
                    "samples_seen": s,
                    "gflops_per_sample": gflops,
                    "compute_gflops": gflops * s,
                    "value": float(text),
                    "samples_seen_actual": actual,
                    "compute_gflops_actual": gflops * actual,
                }
            )
    return out


def download_sources(ref: str = LAION_COMMIT, timeout: float = DOWNLOAD_TIMEOUT_S) -> tuple[str, str]:
    """(notebook JSON text, model_profile.csv text) from raw.githubusercontent.com; one-line UserError when offline."""
    texts = []
    for path in (NOTEBOOK_PATH, MODEL_PROFILE_PATH):
        url = RAW_URL.format(repo=LAION_REPO, ref=ref, path=path)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                texts.append(resp.read().decode("utf-8"))
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(
                f"could not download {url} ({reason}); this needs network access. Offline, fetch {NOTEBOOK_PATH} and "
                f"{MODEL_PROFILE_PATH} from github.com/{LAION_REPO} elsewhere and pass them with --notebook and "
                "--model-profile"
            ) from None
    return texts[0], texts[1]


def write_results_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Writes the long table as CSV (same column order and float formatting as the shared table)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    csv_cells.write_frame(df, path)
    return path


def summary_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Rows per (pretrain, scheduler, benchmark, metric) and model type: the table of the shared README."""
    keys = ["pretrain_dataset", "lr_scheduler", "downstream_dataset", "metric"]
    counts = df.groupby(keys + ["model_type"], sort=False).size().unstack(fill_value=0)
    counts.insert(0, "values", counts.sum(axis=1))
    return counts.astype(np.int64)
