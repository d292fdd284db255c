"""The overview.ipynb parser, on notebooks the tests write (offline), checked against the shared table."""

import json
import urllib.error

import numpy as np
import pandas as pd
import pytest

from vlscale.errors import UserError
from vlscale.scaling import laion_notebook as ln

SCALES = ["1.28M", "3M", "6.4M", "12.8M", "30M", "64M", "128M", "300M", "640M", "1.28B", "3B"]
PROFILE = "model,gflops,model_simple_namespace\nViT-S-32,5.51,ViT-S-32_clip\nViT-B-32,14.54,ViT-B-32_mammut\n"


def _title(ds, metric, pretrain, sched):
    return (f"<font color='green'>'{ds}'</font> {metric} results for models pre-trained on "
            f"<font color='red'>'{pretrain}'</font>  using scheduler <font color='blue'>'{sched}'</font>:")


def _table_html(header, rows):
    """Markup shaped like pandas Styler output: a <style> block, index-name th, row-heading th, data td."""
    head = "".join(f'<th class="col_heading level0 col{i}" >{h}</th>' for i, h in enumerate(header))
    body = "".join(
        f'<tr><th class="row_heading level0 row{r}" >{label}</th>'
        + "".join(f'<td class="data row{r} col{i}" >{v}</td>' for i, v in enumerate(cells)) + "</tr>"
        for r, (label, cells) in enumerate(rows)
    )
    return (f'<style type="text/css">\n#T_x_row0_col0 {{ color: #f1f1f1; }}\n</style>\n<table id="T_x">'
            f'<thead><tr><th class="index_name level0" >Samples Seen</th>{head}</tr></thead><tbody>{body}</tbody>'
            "</table>")


def _notebook(tables):
    """tables: list of (title args, header, rows); outputs alternate title / table as in cell 2."""
    outputs = []
    for title, header, rows in tables:
        outputs.append({"output_type": "display_data", "data": {"text/html": [_title(*title)]}, "metadata": {}})
        outputs.append({"output_type": "display_data", "metadata": {},
                        "data": {"text/html": _table_html(header, rows).splitlines(True),
                                 "text/plain": ["<pandas.io.formats.style.Styler at 0x1>"]}})
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
            "cells": [{"cell_type": "code", "source": ["import pandas"], "outputs": []},
                      {"cell_type": "code", "source": ["evals = ..."], "outputs": outputs}]}


def test_small_notebook_parses_to_the_long_table():
    nb = _notebook([
        (("imagenet1k", "acc1", "datacomp_1b", "cosine"), SCALES[:3],
         [("clip_ViT-S-32", ["0.013", "0.030", "NA"]), ("mammut_ViT-B-32", ["NA", "0.041", "0.080"])]),
        (("mscoco_captions", "text_retrieval_recall@5", "relaion2b-en", "const"), ["3B"],
         [("clip_ViT-S-32", ["0.559"])]),
    ])
    df = ln.parse_notebook(json.dumps(nb), ln.read_model_profile(PROFILE))
    assert list(df.columns) == list(ln.OUTPUT_COLUMNS)
    assert len(df) == 5  # NA cells are skipped
    first = df.iloc[0]
    assert (first.model_type, first.model, first.samples_seen, first.value) == ("clip", "ViT-S-32", 1.28e6, 0.013)
    assert first.compute_gflops == pytest.approx(5.51 * 1.28e6)
    # 3M and 3B runs saw 3.072M / 3.072B samples (the actual compute the paper fits)
    three_m = df[(df.model == "ViT-S-32") & (df.samples_seen == 3e6)].iloc[0]
    assert three_m.samples_seen_actual == 3.072e6
    assert three_m.compute_gflops_actual == pytest.approx(5.51 * 3.072e6)
    last = df.iloc[-1]
    assert (last.downstream_dataset, last.metric, last.pretrain_dataset, last.lr_scheduler) == (
        "mscoco_captions", "text_retrieval_recall@5", "relaion2b-en", "const")
    assert last.samples_seen_actual == 3.072e9
    assert df[df.model == "ViT-B-32"].gflops_per_sample.eq(14.54).all()


def test_rebuilds_the_shared_table_exactly(shared_data):
    """Write the shared CSV back into notebook tables, parse them, and get the same CSV (2 of the 13 tables)."""
    ref = pd.read_csv(shared_data / "laion_scaling_results.csv")
    keys = ["pretrain_dataset", "lr_scheduler", "downstream_dataset", "metric"]
    wanted = [("datacomp_1b", "cosine", "imagenet1k", "acc1"), ("relaion2b-en", "cosine", "mscoco_captions",
                                                                 "image_retrieval_recall@5")]
    profile = pd.read_csv(shared_data / "model_profile.csv")
    tables, parts = [], []
    for pre, sched, ds, metric in wanted:
        sub = ref[(ref[keys] == [pre, sched, ds, metric]).all(axis=1)]
        parts.append(sub)
        labels = list(dict.fromkeys(sub.model_type + "_" + sub.model))
        rows = []
        for label in labels:
            mt, model = label.split("_", 1)
            cells = []
            for s in SCALES:
                hit = sub[(sub.model_type == mt) & (sub.model == model) & (sub.samples_seen == ln.samples_from_label(s))]
                cells.append(f"{hit.value.iloc[0]:.3f}" if len(hit) else "NA")
            rows.append((label, cells))
        tables.append(((ds, metric, pre, sched), SCALES, rows))
    df = ln.parse_notebook(_notebook(tables), ln.read_model_profile(profile.to_csv(index=False)))
    expected = pd.concat(parts, ignore_index=True)
    pd.testing.assert_frame_equal(df, expected, check_exact=False, rtol=1e-12)
    assert len(df) == 360 + 129


def test_structure_errors_are_one_line():
    with pytest.raises(ln.NotebookError, match="found no results tables"):
        ln.parse_notebook({"cells": []}, {})
    nb = _notebook([(("imagenet1k", "acc1", "datacomp_1b", "cosine"), ["3M"], [("coca_ViT-X", ["0.5"])])])
    with pytest.raises(ln.NotebookError, match="ViT-X_coca is not in the model profile"):
        ln.parse_notebook(nb, ln.read_model_profile(PROFILE))
    with pytest.raises(ln.NotebookError, match="not valid JSON"):
        ln.parse_notebook("{broken", {})
    with pytest.raises(ln.NotebookError, match="lacks columns"):
        ln.read_model_profile("a,b\n1,2\n")
    with pytest.raises(ln.NotebookError, match="not a samples-seen scale"):
        ln.samples_from_label("lots")
    assert ln.samples_from_label("6.4M") == 6.4e6 and ln.samples_from_label("1.28B") == 1.28e9


def test_download_without_network_says_what_to_do(monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(ln.urllib.request, "urlopen", offline)
    with pytest.raises(UserError) as e:
        ln.download_sources()
    msg = str(e.value)
    assert "\n" not in msg
    assert "raw.githubusercontent.com/LAION-AI/scaling-laws-for-comparison" in msg
    assert "--notebook" in msg and "--model-profile" in msg


def test_summary_counts_per_table():
    nb = _notebook([(("imagenet1k", "acc1", "datacomp_1b", "cosine"), SCALES[:2],
                     [("clip_ViT-S-32", ["0.1", "0.2"]), ("mammut_ViT-B-32", ["0.1", "NA"])])])
    counts = ln.summary_counts(ln.parse_notebook(nb, ln.read_model_profile(PROFILE)))
    assert counts.iloc[0].to_dict() == {"values": 3, "clip": 2, "mammut": 1}
    assert np.issubdtype(counts.dtypes.iloc[0], np.integer)
