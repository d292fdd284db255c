"""Where vlscale looks for things it does not ship (the paper's published tables)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Development and CI machines carry the paper's tables beside the checkout (read-only, never copied in).
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
RESULTS_ENV = "VLSCALE_RESULTS"
LAION_RESULTS_FILE = "laion_scaling_results.csv"
MODEL_PROFILE_FILE = "model_profile.csv"


def find_shared_file(name: str) -> Path | None:
    """Returns ``../shared/data/NAME`` (or ``$VLSCALE_RESULTS``'s folder) when present, else None."""
    candidates = []
    env = os.environ.get(RESULTS_ENV)
    if env:
        p = Path(env)
        candidates.append(p if p.name == name else p / name)
    candidates.append(SHARED_DATA_DIR / name)
    for c in candidates:
        if c.is_file():
            return c
    return None


def find_results_table(user_path: str | os.PathLike | None = None) -> Path:
    """The published results table: a user path, then $VLSCALE_RESULTS, then ../shared/data.

    Raises FileNotFoundError with instructions when none is found.
    """
    if user_path is not None:
        p = Path(user_path)
        if p.is_dir():
            p = p / LAION_RESULTS_FILE
        if not p.is_file():
            raise FileNotFoundError(f"results table {p} does not exist")
        return p
    found = find_shared_file(LAION_RESULTS_FILE)
    if found is None:
        raise FileNotFoundError(
            f"no results table given and none found in ${RESULTS_ENV} or {SHARED_DATA_DIR}; "
            "pass a CSV/parquet path, or rebuild the paper's table with "
            "`vlscale data laion-results --out DIR` (needs network) and pass DIR/"
            f"{LAION_RESULTS_FILE}"
        )
    return found
