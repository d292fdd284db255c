"""CSV cells a spreadsheet would run as formulas are written with a leading ``'``, and read back unchanged.

OWASP's CSV-injection advice: a cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a
formula to Excel, LibreOffice and Google Sheets (``=HYPERLINK(...)`` in a run name would run when the results table
is opened). Such a text cell is written with a ``'`` in front, which spreadsheets show as text and hide. Only text is
touched: numbers (``-0.25``, ``-1e-3``, ``+inf``), as values or as the strings our own readers hand back, stay bare.

The mapping is reversible: a cell made of quotes followed by a trigger (``'=x``, a user's own leading quote) gets one
more quote, and ``restore`` takes exactly one off, so reading our tables back gives the original text.
"""

from __future__ import annotations

import re
from typing import Any

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_QUOTED = re.compile(r"'+[=+\-@\t\r]")
_NUMBER = re.compile(r"[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity|nan)", re.IGNORECASE)


def _needs_quote(text: str) -> bool:
    if text.startswith(TRIGGERS):
        return _NUMBER.fullmatch(text) is None
    return _QUOTED.match(text) is not None


def neutralise(value: Any) -> Any:
    """``value`` as it should be written: a text cell that a spreadsheet would evaluate gets a leading ``'``."""
    if isinstance(value, str) and _needs_quote(value):
        return "'" + value
    return value


def restore(value: Any) -> Any:
    """The inverse of ``neutralise`` for a cell read back from one of our CSVs."""
    if isinstance(value, str) and _QUOTED.match(value):
        return value[1:]
    return value


def neutralise_row(row: dict) -> dict:
    return {k: neutralise(v) for k, v in row.items()}


def restore_row(row: dict) -> dict:
    return {k: restore(v) for k, v in row.items()}


def _text_columns(df) -> list:
    from pandas.api.types import is_object_dtype, is_string_dtype

    return [c for c in df.columns if is_object_dtype(df[c].dtype) or is_string_dtype(df[c].dtype)]


def neutralise_frame(df):
    """A copy of a pandas DataFrame with its text cells neutralised (numeric columns untouched)."""
    out = df.copy()
    for col in _text_columns(out):
        out[col] = out[col].map(neutralise)
    return out


def restore_frame(df):
    """A pandas DataFrame read from one of our CSVs with its text cells restored (in place; returned)."""
    for col in _text_columns(df):
        df[col] = df[col].map(restore)
    return df


def write_frame(df, path, **to_csv) -> None:
    """``df.to_csv(path, index=False)`` with the text cells neutralised."""
    neutralise_frame(df).to_csv(path, index=False, **to_csv)
