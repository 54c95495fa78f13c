"""Plain functions over a Session for the rows every part writes: identity, trials, bests."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import BestConfig, DeviceClass, Lock, StackFingerprint, TuningTrial, utcnow


def _get_or_create(s: Session, model, unique: dict[str, Any], values: dict[str, Any]):
    row = s.scalar(select(model).filter_by(**unique))
    if row is not None:
        return row
    try:
        with s.begin_nested():  # another process may insert the same row between our select and insert
            row = model(**unique, **values)
            s.add(row)
            s.flush()
        return row
    except IntegrityError:
        return s.scalar(select(model).filter_by(**unique))


def get_or_create_device_class(s: Session, *, slug: str, vendor: str, arch: str, name: str,
                               compute_units: int, memory_gb: int) -> DeviceClass:
    return _get_or_create(s, DeviceClass, {"slug": slug}, dict(vendor=vendor, arch=arch, name=name,
                                                               compute_units=compute_units, memory_gb=memory_gb))


def get_or_create_fingerprint(s: Session, *, hash: str, driver: str, runtime: str, triton: str, torch: str,
                              fields: dict[str, Any]) -> StackFingerprint:
    return _get_or_create(s, StackFingerprint, {"hash": hash},
                          dict(driver=driver, runtime=runtime, triton=triton, torch=torch, fields=fields))


def record_trial(s: Session, **fields: Any) -> TuningTrial:
    row = TuningTrial(**fields)
    s.add(row)
    return row


def write_best(s: Session, *, kernel: str, kernel_version: str, key_hash: str, key: dict, dtype: str,
               device_class_id: int, fingerprint_id: int, config: dict, config_hash: str, median_ms: float,
               default_ms: float | None, speedup: float | None, cv: float | None, trials: int,
               job_id: str | None) -> BestConfig:
    """Supersede the current best of this key, class and stack, and insert the new one, in the
    caller's transaction: readers see the old row or the new one, never none or two."""
    same = (BestConfig.kernel == kernel, BestConfig.kernel_version == kernel_version,
            BestConfig.key_hash == key_hash, BestConfig.device_class_id == device_class_id,
            BestConfig.fingerprint_id == fingerprint_id, BestConfig.superseded_at.is_(None))
    row = BestConfig(kernel=kernel, kernel_version=kernel_version, key_hash=key_hash, key=key, dtype=dtype,
                     device_class_id=device_class_id, fingerprint_id=fingerprint_id, config=config,
                     config_hash=config_hash, median_ms=median_ms, default_ms=default_ms, speedup=speedup,
                     cv=cv, trials=trials, job_id=job_id)

    def supersede() -> None:
        # lock the current row (PostgreSQL) so two finalizers of one key serialize here
        s.scalars(select(BestConfig.id).where(*same).with_for_update()).all()
        s.execute(update(BestConfig).where(*same).values(superseded_at=utcnow()))

    supersede()
    try:
        with s.begin_nested():
            s.add(row)
            s.flush()
    except IntegrityError:
        # a key's first best has no row to lock: a concurrent writer inserted one after our
        # select, and the unique index made us wait for its commit; supersede that one too
        supersede()
        s.add(row)
        s.flush()
    return row


def current_bests(s: Session, *, kernel: str, device_class_slug: str,
                  kernel_version: str | None = None) -> list[BestConfig]:
    q = (select(BestConfig).join(DeviceClass, DeviceClass.id == BestConfig.device_class_id)
         .where(BestConfig.kernel == kernel, DeviceClass.slug == device_class_slug,
                BestConfig.superseded_at.is_(None)))
    if kernel_version is not None:
        q = q.where(BestConfig.kernel_version == kernel_version)
    return list(s.scalars(q))


def best_history(s: Session, *, kernel: str, key_hash: str, device_class_slug: str) -> list[BestConfig]:
    q = (select(BestConfig).join(DeviceClass, DeviceClass.id == BestConfig.device_class_id)
         .where(BestConfig.kernel == kernel, BestConfig.key_hash == key_hash, DeviceClass.slug == device_class_slug)
         .order_by(BestConfig.created_at.desc(), BestConfig.id.desc()))
    return list(s.scalars(q))


def acquire_lock(s: Session, name: str, holder: str, ttl_s: float) -> bool:
    """Take the named lease if it is free or expired; True when this holder now has it.

    Works the same on SQLite and PostgreSQL: an INSERT that only one writer can win, or an
    UPDATE of an expired lease that only one writer can match."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl_s)
    try:
        with s.begin_nested():
            s.add(Lock(name=name, holder=holder, expires_at=expires))
            s.flush()
        return True
    except IntegrityError:
        pass
    took = s.execute(update(Lock).where(Lock.name == name, (Lock.expires_at < now) | (Lock.holder == holder))
                     .values(holder=holder, expires_at=expires)).rowcount
    return took == 1


def release_lock(s: Session, name: str, holder: str) -> None:
    s.execute(delete(Lock).where(Lock.name == name, Lock.holder == holder))
