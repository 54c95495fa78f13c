"""The current best rows of one key, or of one dtype, of a kernel version on a device class, read
from a SQLite file with the standard library's sqlite3: what the runtime reads the embedded
database with inside a model process, where importing SQLAlchemy (~0.2 s) would make the first
lookup miss its 50 ms deadline. `db.store.best_configs` is the same question through the ORM, for
the service; tests/test_runtime.py checks that both answer the same rows in the same order.
Imports nothing beyond the standard library.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

# newest first, as best_configs orders them; "?" are kernel, kernel_version, the class's slug and
# the key hash (or the dtype)
_CURRENT = """
SELECT b.key, b.config, fp.hash, b.created_at
FROM best_configs AS b
JOIN device_classes AS dc ON dc.id = b.device_class_id
JOIN stack_fingerprints AS fp ON fp.id = b.fingerprint_id
WHERE b.superseded_at IS NULL AND b.kernel = ? AND b.kernel_version = ? AND dc.slug = ? AND b.{column} = ?
ORDER BY b.created_at DESC, b.id DESC
"""
BY_KEY, BY_DTYPE = _CURRENT.format(column="key_hash"), _CURRENT.format(column="dtype")
# the winners drop-in kernels reported for one key (db.reported; oldest first, as its reader)
REPORTED = """
SELECT key, config, fingerprint, reported_at FROM reported_configs
WHERE kernel = ? AND kernel_version = ? AND device_class = ? AND key_hash = ?
ORDER BY reported_at, id
"""


def sqlite_file(url: str) -> Path | None:
    """The file of a sqlite:/// URL, told without SQLAlchemy; None for another database or :memory:."""
    scheme, sep, rest = url.partition(":///")
    path = rest.split("?", 1)[0]
    if not sep or scheme.split("+", 1)[0] != "sqlite" or path in ("", ":memory:"):
        return None
    return Path(path)


def current_rows(path: Path, kernel: str, version: str, slug: str, *, key_hash: str | None = None,
                 dtype: str | None = None, _query: str | None = None) -> list[tuple[Any, str, Any, str | None]]:
    """(dims, fingerprint hash, config, tuned_at as ISO-8601) of the current bests of one key
    (key_hash) or one dtype, newest first. The file is opened read-only: a missing one raises
    FileNotFoundError instead of being created empty."""
    import json
    from datetime import datetime, timezone

    query = _query or (BY_KEY if key_hash is not None else BY_DTYPE)
    found = _read(path, query, (kernel, version, slug, key_hash if key_hash is not None else dtype))
    # SQLite keeps UTC wall-clock text: made aware as db.models.UTCDateTime makes it
    return [(json.loads(key)["dims"], fp, json.loads(config),
             datetime.fromisoformat(created).replace(tzinfo=timezone.utc).isoformat() if created else None)
            for key, config, fp, created in found]


def reported_rows(path: Path, kernel: str, version: str, slug: str,
                  key_hash: str) -> list[tuple[Any, str, Any, str | None]]:
    """(dims, fingerprint hash, config, reported_at) of the winners reported for one key, oldest
    first; none from a database not yet upgraded to hold them (its bests are still served)."""
    import sqlite3

    try:
        return current_rows(path, kernel, version, slug, key_hash=key_hash, _query=REPORTED)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise


def _read(path: Path, query: str, params: tuple) -> list[tuple]:
    import sqlite3

    if not path.exists():
        raise FileNotFoundError(f"no tuning database at {path}")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()
