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


def _is_url(pattern: str) -> bool:
    return "://" in pattern


def _glob(pattern: str) -> list[str]:
    """Sorted matches of a glob; object-store URLs (``gs://b/d/*.tar``) are listed through ``etils.epath``."""
    if not _is_url(pattern):
        return sorted(glob.glob(pattern))
    from vlscale.runtime import paths

    scheme, _, rest = pattern.partition("://")
    parts = rest.split("/")
    fixed = next(i for i, p in enumerate(parts) if _GLOB_CHARS & set(p))
    if fixed == 0:
        raise UserError(f"shard glob {pattern!r}: the bucket name cannot be a pattern")
    base = paths.resolve(f"{scheme}://{'/'.join(parts[:fixed])}")
    return sorted(_url(scheme, m) for m in base.glob("/".join(parts[fixed:])))


def _url(scheme: str, path) -> str:
    """``gs://b/x`` for an epath path (its ``str`` already is one; kept explicit for backends that drop it)."""
    text = os.fspath(path)
    return text if _is_url(text) else f"{scheme}://{text.lstrip('/')}"


def _is_dir(pattern: str) -> bool:
    if not _is_url(pattern):
        return os.path.isdir(pattern)
    if pattern.endswith(".tar"):  # a shard name: no request (a brace range of 10^4 shards stays one listing)
        return False
    from vlscale.runtime import paths

    return paths.resolve(pattern).is_dir()


def _exists(pattern: str, listings: dict) -> bool:
    """Whether a literal shard exists; object-store folders are listed once each (``listings`` caches them)."""
    if not _is_url(pattern):
        return Path(pattern).exists()
    from vlscale.runtime import paths

    parent, _, name = pattern.rstrip("/").rpartition("/")
    if parent not in listings:
        folder = paths.resolve(parent)
        listings[parent] = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    return name in listings[parent]


def expand_shards(spec: str | os.PathLike | Sequence[str | os.PathLike], *, must_exist: bool = True) -> list[str]:
    """The ordered shard list for a spec.

    A spec is a path, a glob, a brace pattern, a directory (all ``*.tar`` in it), a
    ``::``-separated list of those (webdataset's multi-source convention), or a sequence of them.
    Globs are sorted; braces keep their written order. Local paths and object-store URLs
    (``gs://bucket/shards/{00000..00099}.tar``, ``gs://bucket/shards/*.tar``, through ``etils.epath``) mix
    freely. Missing literal paths are a UserError when ``must_exist`` (a shard that exists but cannot be
    opened is handled later, by skipping it).
    """
    if isinstance(spec, (str, os.PathLike)):
        parts = [p for p in str(spec).split("::") if p]
    else:
        parts = [str(p) for p in spec]
    shards: list[str] = []
    listings: dict[str, set[str]] = {}
    for part in parts:
        for pattern in expand_braces(part if _is_url(part) else os.path.expanduser(part)):
            if _is_dir(pattern):
                found = _glob(pattern.rstrip("/") + "/*.tar")
                if not found and must_exist:
                    raise UserError(f"shard directory {pattern} has no *.tar files; point at the shards or a glob")
                shards.extend(found)
            elif _GLOB_CHARS & set(pattern):
                found = _glob(pattern)
                if not found and must_exist:
                    raise UserError(f"shard glob {pattern!r} matches no files; check the path")
                shards.extend(found)
            else:
                if must_exist and not _exists(pattern, listings):
                    raise UserError(f"shard {pattern} does not exist; check the path or brace range")
                shards.append(pattern)
    if not shards:
        raise UserError(f"shard spec {spec!r} names no shards")
    return shards


def check_enough_shards(num_shards: int, process_count: int) -> None:
    """One line when ``num_shards`` cannot give every host at least one shard."""
    if num_shards < process_count:
        raise UserError(
            f"{num_shards} shards cannot feed {process_count} hosts; write at least one shard per host"
            " (more is better: shards are the unit of host sharding and shuffling)"
        )


def host_shards(shards: Sequence[str], process_index: int, process_count: int) -> list[str]:
    """Every ``process_count``-th shard starting at ``process_index`` (disjoint, complete): a host's share of a
    finite pass. An endless stream deals equal shares per epoch instead (``webdataset.balanced_epoch_window``)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    check_enough_shards(len(shards), process_count)
    return list(shards[process_index::process_count])
