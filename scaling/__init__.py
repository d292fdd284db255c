"""vlscale.scaling: results tables -> Pareto frontiers -> scaling-law fits -> comparisons.

For notebooks: ``from vlscale.scaling.api import fit, compare, compare_benchmarks``.
(The package does not re-export them: ``vlscale.scaling.fit`` is the fitting module.)
"""
