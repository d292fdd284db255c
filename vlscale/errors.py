"""The one error type users see: bad input, said in one line with what to do.

The CLI prints a ``UserError`` as ``vlscale CMD: error: MESSAGE`` (argparse's format for bad flags too) and exits
2; anything else that escapes a command is a bug: one line plus the path of a crash log, exit 1 (see
``vlscale.cli.main`` and docs/security.md). Name the flag, value or file at fault in the message.
"""


class UserError(ValueError):
    """An error caused by the user's input (a bad file, flag or table).

    The CLI prints it as one line without a traceback; the Python API lets it propagate.
    Feature packages subclass it (e.g. ``ResultsError``) so callers can catch one type.
    """
