"""Where vlscale looks for things it does not ship (the paper's published tables) and keeps what it may reuse
(JAX's persistent compilation cache, ``compilation_cache_dir``).

The results table comes from, in this order: a path the user passes, ``$VLSCALE_RESULTS``, then the shared
folder beside the checkout. A table that is *named* (argument or variable) must exist: a mistyped path is an
error naming it, never a silent fall-back to the paper's table. The shared folder is used only when nothing was
named. Commands print which file they read, and why, as their first output line (``ResultsSource.describe``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vlscale.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
# Development and CI machines carry the paper's tables beside the checkout (read-only, never copied in).
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
RESULTS_ENV = "VLSCALE_RESULTS"
LAION_RESULTS_FILE = "laion_scaling_results.csv"
MODEL_PROFILE_FILE = "model_profile.csv"


# One compilation cache for every command (trainer, evaluator, fitter). $VLSCALE_JAX_CACHE is the fitter's
# earlier name for the same setting, still read.
COMPILATION_CACHE_ENV = "VLSCALE_COMPILATION_CACHE"
COMPILATION_CACHE_OLD_ENV = "VLSCALE_JAX_CACHE"
CACHE_OFF = ("off", "none", "0")


def compilation_cache_dir(setting: str | None = None) -> Path | None:
    """JAX's persistent compilation cache folder: ``setting`` (a training config's ``compilation_cache``) when
    given, else ``$VLSCALE_COMPILATION_CACHE`` (or ``$VLSCALE_JAX_CACHE``), else
    ``$XDG_CACHE_HOME/vlscale/jax`` (``~/.cache/vlscale/jax``); None when the one that applies says off / none / 0.
    Empty values count as not given."""
    for value in (setting, os.environ.get(COMPILATION_CACHE_ENV), os.environ.get(COMPILATION_CACHE_OLD_ENV)):
        if value is not None and value.strip():
            return None if value.strip().lower() in CACHE_OFF else Path(value.strip()).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vlscale" / "jax"


class ResultsTableNotFound(UserError, FileNotFoundError):
    """The named results table does not exist (a UserError; also a FileNotFoundError for older callers)."""


@dataclass(frozen=True)
class ResultsSource:
    path: Path
    origin: str  # "argument", "$VLSCALE_RESULTS" or "shared data"

    def describe(self) -> str:
        """``results table: PATH (from $VLSCALE_RESULTS)``: the first line commands print."""
        return f"results table: {self.path} (from {self.origin})"


def find_shared_file(name: str) -> Path | None:
    """``../shared/data/NAME`` beside the checkout when present, else None."""
    c = SHARED_DATA_DIR / name
    return c if c.is_file() else None


def _named_table(text: str, named_by: str | None) -> Path:
    """The table a user named: a file, or a folder holding laion_scaling_results.csv; must exist."""
    p = Path(os.path.expanduser(text))
    by = f" (named by {named_by})" if named_by else ""
    if p.is_dir():
        inner = p / LAION_RESULTS_FILE
        if not inner.is_file():
            raise ResultsTableNotFound(f"results table {p}{by} is a folder without {LAION_RESULTS_FILE}; "
                                       "name the table file")
        return inner
    if not p.is_file():
        raise ResultsTableNotFound(f"results table {p}{by} does not exist")
    return p


def resolve_results_table(user_path: str | os.PathLike | None = None) -> ResultsSource:
    """The results table to read and where it came from: the argument, then $VLSCALE_RESULTS, then
    ../shared/data. Raises ``ResultsTableNotFound`` (one line, naming the path) when a named table is missing
    or when nothing is named and the shared table is absent."""
    if user_path is not None and str(user_path) != "":
        return ResultsSource(_named_table(str(user_path), None), "argument")
    env = os.environ.get(RESULTS_ENV)
    if env is not None and env.strip() != "":
        return ResultsSource(_named_table(env.strip(), f"${RESULTS_ENV}"), f"${RESULTS_ENV}")
    found = find_shared_file(LAION_RESULTS_FILE)
    if found is None:
        raise ResultsTableNotFound(
            f"no results table given (${RESULTS_ENV} is unset) and none found in {SHARED_DATA_DIR}; "
            "pass a CSV/parquet path, or rebuild the paper's table with "
            "`vlscale data laion-results --out DIR` (needs network) and pass DIR/"
            f"{LAION_RESULTS_FILE}"
        )
    return ResultsSource(found, "shared data")


def find_results_table(user_path: str | os.PathLike | None = None) -> Path:
    """The path of ``resolve_results_table(user_path)`` (kept for scripts that only need the path)."""
    return resolve_results_table(user_path).path


def resolve(path: str | os.PathLike):
    """A path the user gave, ready to read and write: a local one as a ``pathlib.Path`` (as given); an object-store
    URL (``gs://bucket/dir``) as an ``etils.epath.Path`` (gcsfs underneath; see ``runtime.object_store``)."""
    text = os.fspath(path)
    if "://" in text:
        from etils import epath

        return epath.Path(text)
    return Path(text)


def is_local(path) -> bool:
    return isinstance(path, Path) and "://" not in os.fspath(path)
