"""argparse ``type=`` functions shared by every command, so bad flag values fail the same way everywhere.

Each raises ``argparse.ArgumentTypeError``; argparse then prints ``vlscale CMD: error: argument --FLAG: MESSAGE``
and exits 2, the same format as ``UserError``. Use them for every number or list a flag takes::

    p.add_argument("--batch-size", type=argtypes.positive_int, default=64)
    p.add_argument("--seed", type=argtypes.nonnegative_int, default=0)
    p.add_argument("--bootstrap", type=argtypes.count, default=1000)      # also accepts 1e3
    p.add_argument("--predict", type=argtypes.float_list)                # "1e12,2e12" -> (1e12, 2e12)
    p.add_argument("--models", type=argtypes.name_list)                  # "a,b" -> ("a", "b")

Lists reject empty items (``1e12,,2e12``): a doubled comma is a typo, not a request to skip.
"""

from __future__ import annotations

import argparse
import math


def _int(text: str) -> int:
    """An integer; also 1e3 / 2.0 notation when the value is whole (counts are often written that way)."""
    s = str(text).strip()
    try:
        return int(s)
    except ValueError:
        pass
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not math.isfinite(v) or v != int(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(v)


def positive_int(text: str) -> int:
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return v


def nonnegative_int(text: str) -> int:
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return v


count = nonnegative_int  # a number of things (resamples, images): 0 or more, 1e3 notation allowed


def finite_float(text: str) -> float:
    try:
        v = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number")
    return v


def positive_float(text: str) -> float:
    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be greater than 0")
    return v


def nonnegative_float(text: str) -> float:
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return v


def _items(text: str) -> list[str]:
    items = [s.strip() for s in str(text).split(",")]
    if any(s == "" for s in items):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty item; separate values with single commas")
    return items


def name_list(text: str) -> tuple[str, ...]:
    """``a,b`` -> ("a", "b"); an empty item is an error."""
    return tuple(_items(text))


def float_list(text: str) -> tuple[float, ...]:
    """``1e12,2.5e12`` -> (1e12, 2.5e12); an empty item or a non-number is an error."""
    out = []
    for item in _items(text):
        try:
            out.append(finite_float(item))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"{text!r}: {item!r} is not a finite number") from None
    return tuple(out)


def positive_float_list(text: str) -> tuple[float, ...]:
    """``float_list`` whose values must all be greater than 0 (compute, sample counts)."""
    values = float_list(text)
    bad = [v for v in values if v <= 0]
    if bad:
        raise argparse.ArgumentTypeError(f"{text!r}: {bad[0]:g} is not greater than 0")
    return values
