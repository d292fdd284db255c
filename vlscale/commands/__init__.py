"""``vlscale <command>``: one module per command family, each with ``register(registry)`` (see ``vlscale.cli``).

This is the top layer: a command parses its flags and composes the layers below it (for example ``train``
hands the trainer an in-training evaluator built from ``vlscale.eval``). Nothing below imports from here.
Heavy imports (jax, torch) happen inside the handlers so that ``vlscale --help`` stays fast.
"""


def exits_at_once(handler):
    """Marks a command handler whose every output is complete, closed and in place when it returns, so that run
    as a program it may end without the interpreter's teardown (with JAX and XLA loaded that takes 0.3-0.4 s,
    longer than some of these commands' work)."""
    handler.exits_at_once = True
    return handler
