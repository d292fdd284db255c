"""Evaluation suites: ``get_config()`` of each module is a ConfigDict with a ``tasks`` list."""
