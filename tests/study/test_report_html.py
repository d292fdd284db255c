"""report.html keeps its tables inside a 1280-px page: each scrolls in its own box, run names and long benchmark
headers may wrap (checked with a headless-chromium screenshot at 1280 px; here the markup that does it)."""

from __future__ import annotations

from pathlib import Path

from vlscale.study import report


def test_tables_scroll_in_their_own_box_and_long_names_can_wrap():
    md = ("| run | synth_retrieval/image_retrieval_recall@5 (final) |\n|---|---|\n"
          "| `shapes-clip-XS_s32768_synth_noisy_bs64_lr0.002_w8_const` | 0.131 |\n")
    page = report.markdown_to_html(md, Path("."), "t")
    assert '<div class="table"><table>' in page and "</table></div>" in page
    assert "<th>synth_<wbr>retrieval/<wbr>image_<wbr>retrieval_<wbr>recall@5 (final)</th>" in page
    assert "<td><code>shapes-clip-XS_s32768_synth_noisy_bs64_lr0.002_w8_const</code></td>" in page
    style = page.split("<style>")[1].split("</style>")[0]
    assert "div.table{max-width:100%;overflow-x:auto}" in style and "td code{overflow-wrap:anywhere}" in style
