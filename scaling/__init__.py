"""vlscale.scaling: results tables -> Pareto frontiers -> scaling-law fits -> comparisons.

For notebooks: ``from vlscale.scaling import fit, compare`` (loaded lazily so that importing
the package, e.g. for the CLI's help, does not import jax).
"""

_API = ("fit", "compare", "compare_benchmarks", "FitReport", "Comparison", "ComparisonSet")

__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        from vlscale.scaling import api

        return getattr(api, name)
    raise AttributeError(f"module 'vlscale.scaling' has no attribute {name!r}")
