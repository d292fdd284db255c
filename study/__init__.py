"""`vlscale study`: plan, train, evaluate, fit, compare and report a scaling-law study (docs/study.md)."""
