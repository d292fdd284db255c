"""notebooks/quickstart.ipynb executes top to bottom on CPU (nbclient), so it never rots."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"

pytestmark = pytest.mark.slow


def test_quickstart_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "vlscale ready" in outputs
    assert "mammut below clip" in outputs or "not on this machine" in outputs
    assert (tmp_path / "runs" / "notebook_micro" / "report.md").is_file()
    assert "done 2 (of 2)" in outputs
    # the study part ends on its verdict and shows every figure the report drew
    figures = sorted((tmp_path / "runs" / "notebook_micro" / "figures").glob("*.png"))
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if "image/png" in o.get("data", {})]
    assert figures and len(shown) >= len(figures)
    assert f"{len(figures)} figure(s); full report:" in outputs
