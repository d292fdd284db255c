"""The runtime layer: what training, evaluation, the study and the fitter stand on, and nothing model-specific.

``paths`` (where inputs and caches are; ``etils.epath`` for local and object-store paths), ``files`` (the one
atomic write, output checks, locked appends), ``compilation_cache`` (JAX's persistent cache, one setting),
``sharding`` (device mesh and logical-axis rules), ``distributed`` (``jax.distributed`` start-up), ``checkpoint``
(Orbax I/O of a training state), ``signals`` (Ctrl-C / SIGTERM as exceptions), ``resources`` (memory checks),
``progress`` (the one progress display) and ``results_schema`` (the results table's columns, written by
``vlscale.eval`` and read by ``vlscale.scaling``). Imports only third-party packages and ``vlscale.errors``.
"""
