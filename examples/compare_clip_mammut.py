"""CLIP vs MaMMUT, the paper's main comparison, from its published results table.

Fits a·(C+b)^c + d to the binned Pareto frontier of each model type (DataComp-1.4B and Re-LAION-1.4B, cosine
schedule, up to 1e10 samples seen, frontier points up to 1e12 GFLOPs, the frontier built from all runs as in the
paper: ``frontier_scope="all"``), on ImageNet-1k zero-shot and MS-COCO retrieval, predicts the error at the
paper's ViT-L/14 x 12.8B compute (2.14e12 / 2.59e12 GFLOPs) with bootstrap
intervals, and draws the figure used in the README.

    python examples/compare_clip_mammut.py                  # table from $VLSCALE_RESULTS or ../shared/data
    python examples/compare_clip_mammut.py path/to/laion_scaling_results.csv --figure out.png

No table? `vlscale data laion-results --out DIR` rebuilds it from LAION's public notebook (needs network).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from vlscale.errors import UserError
from vlscale.runtime.paths import find_results_table
from vlscale.scaling import api

DEFAULT_FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "clip_vs_mammut.png"
# The README figure is committed; palette quantisation keeps it small (< 300 kB).
FIGURE_DPI = 100
FIGURE_COLOURS = 192


def save_small_png(fig, path: Path) -> int:
    """Saves ``fig`` as an adaptive-palette PNG; returns its size in bytes."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI)
    img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    img.quantize(colors=FIGURE_COLOURS, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", help="results table (default: $VLSCALE_RESULTS or ../shared/data)")
    parser.add_argument("--figure", type=Path, default=DEFAULT_FIGURE, help="where to write the PNG")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        table = find_results_table(args.results)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        cs = api.compare_benchmarks(
            table,
            groups=("clip", "mammut"),
            benchmarks=api.PAPER_BENCHMARKS,
            pretrain_datasets=api.PAPER_PRETRAIN_DATASETS,
            fit_max_compute=api.PAPER_FIT_MAX_COMPUTE,
            at=api.PAPER_PREDICT_AT,
            frontier_scope="all",  # the paper's reading: its bin edges span the held-out runs too
            bootstrap=args.bootstrap,
            progress=lambda m: print(m, file=sys.stderr),
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(cs.summary())

    imagenet = cs.comparisons[0].fit.groups["mammut"].predictions[-1]
    print(f"\nMaMMUT ImageNet-1k error at {imagenet['compute']:.3g} GFLOPs (DataComp-1.4B, frontier <= 1e12 fitted): "
          f"{imagenet['error']:.3f} [{imagenet['lo']:.3f}, {imagenet['hi']:.3f}]")

    args.figure.parent.mkdir(parents=True, exist_ok=True)
    fig = cs.plot()
    size = save_small_png(fig, args.figure)
    print(f"figure: {args.figure} ({size / 1024:.0f} kB)")
    return 0 if cs.consistent else 1


if __name__ == "__main__":
    sys.exit(main())
