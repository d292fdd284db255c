"""Shared test setup: CPU-only JAX, 8 fake devices for sharding tests, the shared data folder."""

import os

# Must happen before jax is imported anywhere (Makefile sets them too; this covers bare `pytest`).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402

from vlscale.paths import SHARED_DATA_DIR  # noqa: E402


@pytest.fixture(scope="session")
def shared_data():
    """The folder with the paper's published tables (read-only; never copied into the repo)."""
    if not (SHARED_DATA_DIR / "laion_scaling_results.csv").is_file():
        pytest.fail(f"shared data not found at {SHARED_DATA_DIR}; tests expect ../shared/data beside the checkout")
    return SHARED_DATA_DIR
