"""The winners drop-in kernels timed locally and reported (db.models.ReportedConfig): one writer,
first wins, and one reader for the runtime's PostgreSQL source. The runtime's SQLite reader of the
same rows is db.best_rows.reported_rows (sqlite3, no SQLAlchemy in a model process)."""
from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.clock import utcnow
from db.models import ReportedConfig

_KEY = ("kernel", "kernel_version", "key_hash", "device_class", "fingerprint")
MAX_REPORTED_ROWS = 100_000  # as the misses: new keys beyond this many rows are dropped


def record_reported(s: Session, records: Iterable[dict[str, Any]], max_rows: int = MAX_REPORTED_ROWS) -> int:
    """Store the winners miss records carry (records as tuner.runtime.miss_tally.parse_record
    returns them, which checked each winner; those without one are passed over). A key that has a
    row keeps it: INSERT ... ON CONFLICT DO NOTHING, so of two processes reporting at once the
    first committed wins and the second's winner is dropped, on SQLite and PostgreSQL alike;
    within one batch the first record of a key wins. Returns the rows offered for insertion."""
    first: dict[tuple, dict[str, Any]] = {}
    for r in records:
        if r.get("reported") is not None:
            first.setdefault(tuple(r[f] for f in _KEY), r)
    if not first:
        return 0
    room = max(0, max_rows - s.scalar(select(func.count()).select_from(ReportedConfig)))
    now = utcnow()
    values = [{**{f: r[f] for f in _KEY}, "dtype": r["dtype"], "config": r["reported"]["config"],
               "key": {k: v for k, v in r["key"].items() if k != "signature"},  # the key alone
               "median_ms": r["reported"]["median_ms"], "reported_at": now} for r in list(first.values())[:room]]
    if not values:
        return 0
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    s.execute(insert(ReportedConfig).values(values).on_conflict_do_nothing(index_elements=list(_KEY)))
    return len(values)


def reported_configs(s: Session, *, kernel: str, kernel_version: str, key_hash: str,
                     device_class: str) -> list[ReportedConfig]:
    """The reported winners of one key on a class, one per stack fingerprint, oldest first."""
    M = ReportedConfig
    return list(s.scalars(select(M).where(M.kernel == kernel, M.kernel_version == kernel_version,
                                          M.key_hash == key_hash, M.device_class == device_class)
                          .order_by(M.reported_at, M.id)))


def reported_list(s: Session, *, kernel: str | None = None,
                  device_classes: Iterable[str] | None = None) -> list[ReportedConfig]:
    """Every reported winner of one kernel (or all) on these classes (or all): GET /v1/bundle's."""
    q = select(ReportedConfig)
    if kernel is not None:
        q = q.where(ReportedConfig.kernel == kernel)
    if device_classes is not None:
        q = q.where(ReportedConfig.device_class.in_(list(device_classes)))
    return list(s.scalars(q.order_by(ReportedConfig.id)))


def reported_version(s: Session, *, kernel: str | None = None,
                     device_classes: Iterable[str] | None = None) -> tuple[int, int]:
    """(highest id, rows) of what reported_list would answer: a row is never changed nor deleted,
    so this changes whenever they do."""
    q = select(func.max(ReportedConfig.id), func.count())
    if kernel is not None:
        q = q.where(ReportedConfig.kernel == kernel)
    if device_classes is not None:
        q = q.where(ReportedConfig.device_class.in_(list(device_classes)))
    top, n = s.execute(q).one()
    return (top or 0, n)
