"""Shared test setup: CPU-only JAX, 8 fake devices for sharding tests, the shared data folder."""

import os

# Must happen before jax is imported anywhere (Makefile sets them too; this covers bare `pytest`).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# One persistent compilation cache for the whole session (the fitter's CLI tests start fresh processes, which then
# skip compiling), in a temporary folder: never the user's ~/.cache. A caller's own setting is kept.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

if not os.environ.get("VLSCALE_COMPILATION_CACHE", "").strip():
    _cache = tempfile.mkdtemp(prefix="vlscale-test-jax-cache-")
    os.environ["VLSCALE_COMPILATION_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, True)

import pytest  # noqa: E402

from vlscale.runtime.paths import SHARED_DATA_DIR  # noqa: E402


@pytest.fixture(scope="session")
def shared_data():
    """The folder with the paper's published tables (read-only; never copied into the repo)."""
    if not (SHARED_DATA_DIR / "laion_scaling_results.csv").is_file():
        pytest.fail(f"shared data not found at {SHARED_DATA_DIR}; tests expect ../shared/data beside the checkout")
    return SHARED_DATA_DIR
