"""The one error type users see: bad input, said in one line with what to do."""


class UserError(ValueError):
    """An error caused by the user's input (a bad file, flag or table).

    The CLI prints it as one line without a traceback; the Python API lets it propagate.
    Feature packages subclass it (e.g. ``ResultsError``) so callers can catch one type.
    """
