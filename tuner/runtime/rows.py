"""What a source answers (tuner/runtime/sources.py): one stored row, and the stored shapes of a
kernel version, dtype and class with their nearest-shape ranking."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Stored:
    """One stored configuration as a source returns it (a current best, or a reported winner:
    tuned_at is then when it was reported)."""

    dims: Mapping[str, int]
    fingerprint: str
    config: Mapping[str, Any]
    tuned_at: str | None = None  # ISO-8601


class ShapeSet:
    """The stored shapes of one kernel version, dtype and class, with an index for nearest-shape
    ranking built on first use (numpy, imported then)."""

    def __init__(self, rows: list[Stored]):
        self.rows = rows
        self._index: dict[tuple[str, ...], tuple] = {}

    def ranked(self, dims: Mapping[str, int], fingerprint: str, limit: int) -> list[tuple[Stored, float]]:
        """Up to `limit` rows nearest to dims in log2 space (a 2x change of any dim counts 1),
        nearest first; among equals the live fingerprint first. Rows lacking a dim are skipped."""
        import numpy as np

        names = tuple(dims)
        index = self._index.get(names)
        if index is None:  # a row whose dims are not positive ints (a damaged source) is never near
            usable = [i for i, r in enumerate(self.rows)
                      if all(type(r.dims.get(n)) is int and r.dims[n] > 0 for n in names)]
            logs = np.array([[math.log2(self.rows[i].dims[n]) for n in names] for i in usable],
                            dtype=np.float64).reshape(len(usable), len(names))
            fps = np.array([self.rows[i].fingerprint for i in usable], dtype=object)
            index = self._index[names] = (usable, logs, fps)
        usable, logs, fps = index
        if not usable:
            return []
        want = np.array([math.log2(max(1, dims[n])) for n in names])
        dist = np.abs(logs - want).sum(axis=1)
        order = np.lexsort(((fps != fingerprint), dist))[:limit]
        return [(self.rows[usable[i]], float(dist[i])) for i in order]
