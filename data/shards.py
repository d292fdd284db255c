"""Shard specs: turn what a user types (paths, globs, brace ranges, lists) into an ordered list of files.

Webdataset corpora are named the way img2dataset writes them, e.g. ``shards/{00000..01023}.tar``; the
order of the expanded list matters because shard-level host sharding and shuffling index into it.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

from vlscale.errors import UserError

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_GLOB_CHARS = set("*?[")


def expand_braces(spec: str) -> list[str]:
    """Expands ``{a,b}`` alternatives and ``{000..123}`` zero-padded ranges, left to right, in order."""
    m = _BRACE.search(spec)
    if m is None:
        return [spec]
    head, body, tail = spec[: m.start()], m.group(1), spec[m.end() :]
    r = _RANGE.match(body)
    if r:
        lo_s, hi_s = r.groups()
        lo, hi = int(lo_s), int(hi_s)
        if hi < lo:
            raise UserError(f"shard range {{{body}}} in {spec!r} counts down; write it as {{{hi_s}..{lo_s}}}")
        width = len(lo_s) if lo_s.startswith("0") and len(lo_s) > 1 else 0
        items = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        items = body.split(",")
    out = []
    for item in items:
        out.extend(expand_braces(head + item + tail))
    return out


def expand_shards(spec: str | os.PathLike | Sequence[str | os.PathLike], *, must_exist: bool = True) -> list[str]:
    """The ordered shard list for a spec.

    A spec is a path, a glob, a brace pattern, a directory (all ``*.tar`` in it), a
    ``::``-separated list of those (webdataset's multi-source convention), or a sequence of them.
    Globs are sorted; braces keep their written order. Missing literal paths are a UserError when
    ``must_exist`` (a shard that exists but cannot be opened is handled later, by skipping it).
    """
    if isinstance(spec, (str, os.PathLike)):
        parts = [p for p in str(spec).split("::") if p]
    else:
        parts = [str(p) for p in spec]
    shards: list[str] = []
    for part in parts:
        for pattern in expand_braces(os.path.expanduser(part)):
            if os.path.isdir(pattern):
                found = sorted(glob.glob(os.path.join(pattern, "*.tar")))
                if not found and must_exist:
                    raise UserError(f"shard directory {pattern} has no *.tar files; point at the shards or a glob")
                shards.extend(found)
            elif _GLOB_CHARS & set(pattern):
                found = sorted(glob.glob(pattern))
                if not found and must_exist:
                    raise UserError(f"shard glob {pattern!r} matches no files; check the path")
                shards.extend(found)
            else:
                if must_exist and not Path(pattern).exists():
                    raise UserError(f"shard {pattern} does not exist; check the path or brace range")
                shards.append(pattern)
    if not shards:
        raise UserError(f"shard spec {spec!r} names no shards")
    return shards


def host_shards(shards: Sequence[str], process_index: int, process_count: int) -> list[str]:
    """This host's shards: every ``process_count``-th one starting at ``process_index`` (disjoint, complete)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if len(shards) < process_count:
        raise UserError(
            f"{len(shards)} shards cannot feed {process_count} hosts; write at least one shard per host"
            " (more is better: shards are the unit of host sharding and shuffling)"
        )
    return list(shards[process_index::process_count])
