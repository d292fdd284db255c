"""vlscale: scaling-law studies of CLIP and MaMMUT in JAX/Flax.

The repo-root folders map to subpackages: ``models/`` -> ``vlscale.models``,
``scaling/`` -> ``vlscale.scaling``, ``data/`` -> ``vlscale.data``, ``train/``,
``eval/`` and ``configs/`` likewise (see pyproject.toml).
"""

__version__ = "0.1.0"

from vlscale.runtime import object_store as _object_store  # noqa: E402

_object_store.configure()  # gs:// in every layer from STORAGE_EMULATOR_HOST alone (no-op without it)
