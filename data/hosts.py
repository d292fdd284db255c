"""Decisions every host must take together: sums of small host-side counters over all processes.

Under JAX's multi-controller runtime every process runs the same program, and a process that stops (or
takes one more batch) while the others enter the next collective leaves them hanging. So the data layer's
stop decisions (the bad-sample guard, the end of a finite pass) are made on counts summed over hosts, which
every host sees identically. ``allgather_sum`` is the default reduction; tests pass a simulated one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ReduceFn = Callable[[np.ndarray], np.ndarray]  # int64 [k] on this host -> int64 [k] summed over hosts
_LOW_BITS = 31  # int64 counts travel as two int32 words: JAX without x64 would truncate int64 to int32


def allgather_sum(counts: np.ndarray) -> np.ndarray:
    """``counts`` (int64 [k], this host) summed over all processes, exactly, via ``process_allgather``.

    A collective: every process must call it, the same number of times, with the same shape. With one
    process it returns the counts unchanged (no device work).
    """
    import jax

    counts = np.asarray(counts, np.int64)
    if jax.process_count() == 1:
        return counts.copy()
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(to_words(counts)), np.int64)  # [processes, 2, k]
    return from_words(gathered).sum(axis=0)


def to_words(counts: np.ndarray) -> np.ndarray:
    """Non-negative int64 [k] -> int32 [2, k] (high and low 31 bits), exact for counts below 2**62."""
    counts = np.asarray(counts, np.int64)
    if (counts < 0).any():
        raise ValueError("host counts must be non-negative")
    return np.stack([counts >> _LOW_BITS, counts & ((1 << _LOW_BITS) - 1)]).astype(np.int32)


def from_words(words: np.ndarray) -> np.ndarray:
    """int32 [..., 2, k] from ``to_words`` -> int64 [..., k]."""
    words = np.asarray(words, np.int64)
    return (words[..., 0, :] << _LOW_BITS) + words[..., 1, :]


def local_only(counts: np.ndarray) -> np.ndarray:
    """The reduction for a single process: nothing to sum."""
    return np.asarray(counts, np.int64).copy()
