"""vlscale: scaling-law studies of CLIP and MaMMUT in JAX/Flax.

The repo-root folders map to subpackages: ``models/`` -> ``vlscale.models``,
``scaling/`` -> ``vlscale.scaling``, ``data/`` -> ``vlscale.data``, ``train/``,
``eval/`` and ``configs/`` likewise (see pyproject.toml).
"""

__version__ = "0.1.0"
