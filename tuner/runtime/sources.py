"""Where the runtime reads stored configurations: one small `Source` interface and its kinds.

Adding a source is one class: subclass `Source`, give it a `name`, a `from_settings` that
returns an instance when the settings ask for it (else None), `exact` and `shapes`; then put it
in `SOURCES`, before the kinds it should win over. The first kind whose `from_settings` answers
is the process's source. Both questions are asked from the runtime's background thread, never
on a launch; a source may raise (the runtime then serves defaults and asks again later) and
may keep what it read until `refresh()`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping


@dataclass(frozen=True)
class Stored:
    """One current best configuration as a source returns it."""

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
        if index is None:
            usable = [i for i, r in enumerate(self.rows) if all(n in r.dims for n in names)]
            logs = np.array([[math.log2(max(1, int(self.rows[i].dims[n]))) for n in names] for i in usable],
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


class Source:
    """Stored configurations by key (see the module docstring for adding a kind)."""

    name: ClassVar[str] = "source"

    @classmethod
    def from_settings(cls, settings: Any) -> "Source | None":
        """An instance when the settings (tuner.settings.Settings) choose this kind, else None."""
        return None

    def exact(self, kernel: str, version: str, key_hash: str, slug: str) -> list[Stored]:
        """The current bests of one key on a device class, newest first (any fingerprint)."""
        raise NotImplementedError

    def shapes(self, kernel: str, version: str, dtype: str, slug: str) -> ShapeSet:
        """Every stored shape of a kernel version and dtype on a device class."""
        raise NotImplementedError

    def refresh(self) -> None:
        """Forget what was read, so the next questions see rows stored since."""

    def describe(self) -> str:
        """Where it reads, for messages (no password)."""
        return self.name


class DatabaseSource(Source):
    """The tuning database (TUNER_DB_URL), through db.store's one reader of best rows."""

    name = "database"

    def __init__(self, url: str):
        self.url = url
        self._shapes: dict[tuple, ShapeSet] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> "DatabaseSource":
        return cls(settings.db_url)

    def describe(self) -> str:
        from db.session import redact

        return f"database {redact(self.url)}"

    def _rows(self, **filters: Any) -> list[Stored]:
        from db import store
        from db.session import session_scope, sqlite_path

        path = sqlite_path(self.url)
        if path is not None and not path.exists():
            # connecting would create an empty file: say so instead
            raise FileNotFoundError(f"no tuning database at {path}")
        with session_scope(self.url) as s:
            return [Stored(b.key["dims"], fp.hash, b.config, b.created_at.isoformat())
                    for b, _, fp in store.best_configs(s, **filters)]

    def exact(self, kernel: str, version: str, key_hash: str, slug: str) -> list[Stored]:
        return self._rows(kernel=kernel, kernel_version=version, key_hash=key_hash, device_classes=[slug])

    def shapes(self, kernel: str, version: str, dtype: str, slug: str) -> ShapeSet:
        k = (kernel, version, dtype, slug)
        if k not in self._shapes:  # one scan per kernel and dtype, then nearest lookups are in memory
            self._shapes[k] = ShapeSet(self._rows(kernel=kernel, kernel_version=version, dtype=dtype,
                                                  device_classes=[slug]))
        return self._shapes[k]

    def refresh(self) -> None:
        self._shapes = {}


class BundleSource(Source):
    """An exported bundle file (TUNER_CONFIG_BUNDLE; tuner/formats/bundle.py), read again when
    its modification time changes."""

    name = "bundle"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._bundle: Any = None
        self._mtime: float | None = None
        self._shapes: dict[tuple, ShapeSet] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> "BundleSource | None":
        return cls(settings.config_bundle) if settings.config_bundle is not None else None

    def describe(self) -> str:
        return f"bundle {self.path}"

    def _load(self):
        if self._bundle is None:
            from tuner.formats.bundle import read

            mtime = self.path.stat().st_mtime
            self._bundle, self._mtime, self._shapes = read(self.path), mtime, {}
        return self._bundle

    def exact(self, kernel: str, version: str, key_hash: str, slug: str) -> list[Stored]:
        rows = [Stored(e["key"]["dims"], fp, config, e.get("tuned_at"))
                for fp, config, e in self._load().exact(kernel, version, key_hash, slug)]
        return sorted(rows, key=lambda r: r.tuned_at or "", reverse=True)  # newest first, as the database

    def shapes(self, kernel: str, version: str, dtype: str, slug: str) -> ShapeSet:
        bundle = self._load()
        k = (kernel, version, dtype, slug)
        if k not in self._shapes:
            self._shapes[k] = ShapeSet([Stored(dims, fp, config, tuned_at)
                                        for dims, fp, config, tuned_at in bundle.shapes(kernel, version, dtype, slug)])
        return self._shapes[k]

    def refresh(self) -> None:
        try:
            changed = self.path.stat().st_mtime != self._mtime
        except OSError:
            changed = True
        if changed:
            self._bundle = None


# the kinds of source, the first whose from_settings answers wins
SOURCES: list[type[Source]] = [BundleSource, DatabaseSource]


def open_source(settings: Any) -> Source:
    """The process's source for these settings."""
    for kind in SOURCES:
        source = kind.from_settings(settings)
        if source is not None:
            return source
    raise LookupError("no configuration source is configured")
