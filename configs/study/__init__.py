"""Study configs: grids of model scales x samples seen x sweep for `vlscale study` (docs/study.md)."""
