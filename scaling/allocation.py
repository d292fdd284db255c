"""Compute-optimal allocation: how samples seen D and model cost N grow with compute along the fitted frontier."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def allocation(points: pd.DataFrame, mask: np.ndarray, predict: Sequence[float]) -> dict:
    """Log-linear fits of samples seen D and model cost N (GFLOPs per sample) on compute, over frontier points.

    Because C = N * D exactly, the two slopes sum to 1 (a check on the data); predictions at ``predict``.
    """
    c = points["x"].to_numpy()[mask]
    samples_col = "samples_seen_actual" if "samples_seen_actual" in points.columns else "samples_seen"
    out = {}
    if len(np.unique(points["gflops_per_sample"].to_numpy()[mask])) < 2:
        return out  # one model size (e.g. --group-by model): there is no trade-off to fit
    for key, col in (("D_opt", samples_col), ("N_opt", "gflops_per_sample")):
        v = points[col].to_numpy()[mask]
        if len(np.unique(c)) < 2:
            continue
        slope, intercept = np.polyfit(np.log(c), np.log(v), 1)
        out[key] = {
            "column": col,
            "slope": float(slope),
            "intercept": float(intercept),
            "formula": f"{col} = exp({intercept:.4g}) * C^{slope:.4g}",
            "predictions": [{"compute": float(p), "value": float(np.exp(intercept + slope * np.log(p)))} for p in predict],
        }
    return out
