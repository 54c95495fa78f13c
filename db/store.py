"""Plain functions over a Session for the rows every part writes and reads: identity, trials,
bests, leases, runtime misses. Each kind of row has one writer here, and the current best
rows one reader (`best_configs`), which the runtime, the export, the retune, the search's warm
start and the CLI all use; the misses one reader (`misses`), which `tuner misses` and the miss
retune use; a drop-in key's launch signature one (`launch_signatures`). Jobs and their keys are db/lifecycle.py's."""
from __future__ import annotations

from datetime import timedelta
from typing import Any, Iterable

from sqlalchemy import case, delete, func, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.clock import utcnow
from db.models import (
    BestConfig,
    DeviceClass,
    ImportedConfig,
    Job,
    JobKey,
    Lock,
    RuntimeMiss,
    StackFingerprint,
    TrialClaim,
    TuningTrial,
)

ANY = object()  # write_best: supersede whatever row is current


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


def store_identity(s: Session, device_class: dict[str, Any], fingerprint: dict[str, Any]) -> tuple[int, int]:
    """(device_class_id, fingerprint_id) of a live identity, its rows created when new.
    device_class: a DeviceClass's JSON (with the "device_name" torch reported, where it did);
    fingerprint: a StackFingerprint's fields and its "hash"."""
    dc = get_or_create_device_class(s, **{k: device_class[k] for k in ("slug", "vendor", "arch", "name",
                                                                        "compute_units", "memory_gb")})
    name = device_class.get("device_name")
    if name and name not in (dc.device_names or []):
        dc.device_names = [*(dc.device_names or []), name]
    fp = get_or_create_fingerprint(s, hash=fingerprint["hash"], driver=fingerprint["driver"],
                                   runtime=fingerprint["runtime"], triton=fingerprint["triton"],
                                   torch=fingerprint["torch"],
                                   fields={k: v for k, v in fingerprint.items() if k != "hash"})
    s.flush()
    return dc.id, fp.id


def record_trial(s: Session, **fields: Any) -> TuningTrial:
    row = TuningTrial(**fields)
    s.add(row)
    return row


def claim_config(s: Session, *, study_name: str, config_hash: str, trial_number: int,
                 job_key_id: int | None, worker_id: int | None) -> bool:
    """Take a configuration of a study for measurement; False when another trial holds it (in
    flight, or measured). One INSERT that only one claimant can win, on SQLite and PostgreSQL."""
    try:
        with s.begin_nested():
            s.add(TrialClaim(study_name=study_name, config_hash=config_hash, trial_number=trial_number,
                             job_key_id=job_key_id, worker_id=worker_id, claimed_at=utcnow()))
            s.flush()
        return True
    except IntegrityError:
        return False


def record_claimed_trial(s: Session, **fields: Any) -> TuningTrial | None:
    """Store a measured trial (`record_trial`'s fields) in the caller's transaction, only while the
    claim of its configuration is still this trial's (`optuna_number`) and unfilled: a trial that
    was failed as dead (its claim deleted, perhaps taken again) while its worker was stopped is
    dropped (None), never stored beside the new one."""
    claim = s.scalar(select(TrialClaim).where(TrialClaim.study_name == fields["study_name"],
                                              TrialClaim.config_hash == fields["config_hash"]).with_for_update())
    if claim is None or claim.trial_number != fields["optuna_number"] or claim.trial_row_id is not None:
        return None
    row = record_trial(s, **fields)
    s.flush()
    claim.trial_row_id = row.id
    return row


def release_claims(s: Session, study_name: str, trial_numbers: Iterable[int]) -> int:
    """Delete the unfilled claims of these Optuna trials of a study (failed as dead): their
    configurations may be proposed again."""
    numbers = list(trial_numbers)
    if not numbers:
        return 0
    return s.execute(delete(TrialClaim).where(TrialClaim.study_name == study_name,
                                              TrialClaim.trial_number.in_(numbers),
                                              TrialClaim.trial_row_id.is_(None))).rowcount


def write_best(s: Session, *, kernel: str, kernel_version: str, key_hash: str, key: dict, dtype: str,
               device_class_id: int, fingerprint_id: int, config: dict, config_hash: str, median_ms: float,
               default_ms: float | None, speedup: float | None, cv: float | None, trials: int,
               job_id: str | None, replaces: int | None | object = ANY) -> BestConfig | None:
    """Supersede the current best of this key, class and stack, and insert the new one, in the
    caller's transaction: readers see the old row or the new one, never none or two.

    replaces: the id of the current row the new one was measured against (None: there was none;
    ANY: whatever is current). When another writer changed the current row meanwhile, nothing is
    written and None is returned: the caller measures against the new current row first."""
    same = (BestConfig.kernel == kernel, BestConfig.kernel_version == kernel_version,
            BestConfig.key_hash == key_hash, BestConfig.device_class_id == device_class_id,
            BestConfig.fingerprint_id == fingerprint_id, BestConfig.superseded_at.is_(None))
    row = BestConfig(kernel=kernel, kernel_version=kernel_version, key_hash=key_hash, key=key, dtype=dtype,
                     device_class_id=device_class_id, fingerprint_id=fingerprint_id, config=config,
                     config_hash=config_hash, median_ms=median_ms, default_ms=default_ms, speedup=speedup,
                     cv=cv, trials=trials, job_id=job_id)

    def supersede() -> bool:
        # lock the current row (PostgreSQL) so two finalizers of one key serialize here
        current = s.scalars(select(BestConfig.id).where(*same).with_for_update()).all()
        if replaces is not ANY and current != ([replaces] if replaces is not None else []):
            return False
        s.execute(update(BestConfig).where(*same).values(superseded_at=utcnow()))
        return True

    if not supersede():
        return None
    try:
        with s.begin_nested():
            s.add(row)
            s.flush()
    except IntegrityError:
        # a key's first best has no row to lock: a concurrent writer inserted one after our
        # select, and the unique index made us wait for its commit
        if replaces is not ANY:
            return None  # we were not measured against it
        supersede()
        s.add(row)
        s.flush()
    return row


def best_configs(s: Session, *, kernel: str | None = None, kernel_version: str | None = None,
                 key_hash: str | None = None, dtype: str | None = None,
                 device_classes: Iterable[str] | None = None, device_class_id: int | None = None,
                 current: bool = True, limit: int | None = None) -> list[tuple[BestConfig, str, StackFingerprint]]:
    """Best rows, newest first, each with its device class slug and fingerprint row: the current
    ones (never superseded) unless `current` is False (a key's history). Every filter given narrows;
    `device_classes` is a collection of slugs; at most `limit` rows."""
    q = (select(BestConfig, DeviceClass.slug, StackFingerprint)
         .join(DeviceClass, DeviceClass.id == BestConfig.device_class_id)
         .join(StackFingerprint, StackFingerprint.id == BestConfig.fingerprint_id)
         .order_by(BestConfig.created_at.desc(), BestConfig.id.desc()))
    if current:
        q = q.where(BestConfig.superseded_at.is_(None))
    q = _narrowed(q, kernel=kernel, kernel_version=kernel_version, key_hash=key_hash, dtype=dtype,
                  device_classes=device_classes, device_class_id=device_class_id)
    return [(b, slug, fp) for b, slug, fp in s.execute(q.limit(limit)).all()]


def _narrowed(q, *, kernel, kernel_version=None, key_hash=None, dtype=None, device_classes=None,
              device_class_id=None):
    for column, value in ((BestConfig.kernel, kernel), (BestConfig.kernel_version, kernel_version),
                          (BestConfig.key_hash, key_hash), (BestConfig.dtype, dtype),
                          (BestConfig.device_class_id, device_class_id)):
        if value is not None:
            q = q.where(column == value)
    if device_classes is not None:
        q = q.where(DeviceClass.slug.in_(list(device_classes)))
    return q


def best_rows_mark(*, kernel: str | None = None, key_hashes: Iterable[str] | None = None,
                   device_classes: Iterable[str] | None = None) -> tuple:
    """(highest id, count) of the best rows so narrowed, superseded ones included, as two scalar
    subqueries for a caller's one statement: a best is never updated in place but superseded by a
    newer row, so the pair changes whenever the current rows do (a bundle's 304, a held page)."""
    q = select(func.max(BestConfig.id), func.count(BestConfig.id))
    if kernel is not None:
        q = q.where(BestConfig.kernel == kernel)
    if key_hashes is not None:
        q = q.where(BestConfig.key_hash.in_(list(key_hashes)))
    if device_classes is not None:
        q = q.where(BestConfig.device_class_id.in_(select(DeviceClass.id)
                                                   .where(DeviceClass.slug.in_(list(device_classes)))))
    return (q.with_only_columns(func.max(BestConfig.id)).scalar_subquery(),
            q.with_only_columns(func.count(BestConfig.id)).scalar_subquery())


def best_configs_version(s: Session, *, kernel: str | None = None,
                         device_classes: Iterable[str] | None = None) -> tuple[int, int]:
    """(highest id, rows) of every best row that best_configs would narrow to (GET /v1/bundle
    answers 304 on it)."""
    top, n = s.execute(select(*best_rows_mark(kernel=kernel, device_classes=device_classes))).one()
    return (top or 0, n)


def device_names(s: Session) -> dict[str, list[str]]:
    """slug -> the device names torch reported on the class's workers, first seen first."""
    return {slug: list(names or []) for slug, names in s.execute(select(DeviceClass.slug, DeviceClass.device_names))}


def write_imported(s: Session, rows: Iterable[dict[str, Any]]) -> int:
    """Store imported configurations (kernel, device_selector, dtype, dims, dims_hash, config, source):
    one row per kernel, selector, dtype and dims, the last import replacing an earlier one. Returns
    the count."""
    n = 0
    for r in rows:
        unique = {k: r[k] for k in ("kernel", "device_selector", "dtype", "dims_hash")}
        row = s.scalar(select(ImportedConfig).filter_by(**unique))
        if row is None:
            row = ImportedConfig(**unique)
            s.add(row)
        row.dims, row.config, row.source, row.imported_at = r["dims"], r["config"], r["source"], utcnow()
        n += 1
    s.flush()
    return n


def imported_configs(s: Session, *, kernel: str, dtype: str | None = None) -> list[ImportedConfig]:
    """Imported configurations of a kernel (and dtype), oldest first."""
    q = select(ImportedConfig).where(ImportedConfig.kernel == kernel).order_by(ImportedConfig.id)
    if dtype is not None:
        q = q.where(ImportedConfig.dtype == dtype)
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


_MISS_KEY = ("kernel", "kernel_version", "key_hash", "device_class", "fingerprint", "level")
MAX_MISS_COUNT = 2**53  # a row's count stops here (exact as a float in JSON and Prometheus; far from int8's end)
MAX_MISS_ROWS = 100_000  # new keys beyond this many rows are dropped until old ones are pruned


def record_misses(s: Session, records: Iterable[dict[str, Any]], chunk: int = 500,
                  max_rows: int = MAX_MISS_ROWS) -> int:
    """Add counted misses (each: the _MISS_KEY fields, key, dtype, count, first_seen and last_seen as
    aware datetimes) to their rows: counts summed up to MAX_MISS_COUNT (saturating, so no sum ever
    overflows and fails a later batch), the first and last sightings widened but never past now
    (a row dated in the future would outlive pruning). A key without a row gets one only while
    the table holds fewer than max_rows. One upsert per chunk (INSERT ... ON CONFLICT DO UPDATE,
    on SQLite and PostgreSQL alike), so concurrent writers never lose a count. Returns the rows
    touched."""
    now = utcnow()
    merged: dict[tuple, dict[str, Any]] = {}
    for r in records:
        if not r["count"]:  # a record carrying only a drop-in's reported winner (db.reported)
            continue
        k = tuple(r[f] for f in _MISS_KEY)
        last = min(r["last_seen"], now)
        first = min(r["first_seen"], last)
        row = merged.get(k)
        if row is None:
            merged[k] = {**{f: r[f] for f in _MISS_KEY}, "key": r["key"], "dtype": r["dtype"],
                         "count": min(r["count"], MAX_MISS_COUNT), "first_seen": first, "last_seen": last}
        else:
            row["count"] = min(row["count"] + r["count"], MAX_MISS_COUNT)
            row["first_seen"], row["last_seen"] = min(row["first_seen"], first), max(row["last_seen"], last)
            if _signed(r):
                row["key"] = r["key"]
    rows = _within_cap(s, list(merged.values()), max_rows)
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    # a drop-in key's launch signature (its inputs are rebuilt from it) replaces the stored key, so a
    # row first written without one (an imported record, an older runtime) becomes tunable; a record
    # without one never erases it
    for signed in (False, True):
        part = [r for r in rows if _signed(r) == signed]
        for i in range(0, len(part), chunk):
            stmt = insert(RuntimeMiss).values(part[i:i + chunk])
            new = stmt.excluded
            s.execute(stmt.on_conflict_do_update(index_elements=list(_MISS_KEY), set_={
                # compared before added: the sum itself never exceeds the cap (nor int8, nor SQLite's int64)
                "count": case((new.count > MAX_MISS_COUNT - RuntimeMiss.count, MAX_MISS_COUNT),
                              else_=RuntimeMiss.count + new.count),
                "first_seen": case((new.first_seen < RuntimeMiss.first_seen, new.first_seen),
                                   else_=RuntimeMiss.first_seen),
                "last_seen": case((new.last_seen > RuntimeMiss.last_seen, new.last_seen), else_=RuntimeMiss.last_seen),
                **({"key": new.key} if signed else {})}))
    return len(rows)


def _signed(record: dict[str, Any]) -> bool:
    return isinstance(record["key"], dict) and record["key"].get("signature") is not None


def launch_signatures(s: Session, *, kernel: str, kernel_version: str, key_hashes: Iterable[str]) -> dict[str, dict]:
    """key hash -> the launch signature a drop-in kernel recorded for the key (its trial inputs are
    rebuilt from it): of the rows of this kernel version that carry one (runtime misses, job keys),
    the newest. A key no row signed is left out. The one reader of which signature a key is tuned
    with: `tuner tune`, `tuner submit` and the stale-key retune all take it from here."""
    hashes = sorted(set(key_hashes))
    if not hashes:
        return {}
    rows = [*s.execute(select(RuntimeMiss.key_hash, RuntimeMiss.key, RuntimeMiss.last_seen)
                       .where(RuntimeMiss.kernel == kernel, RuntimeMiss.kernel_version == kernel_version,
                              RuntimeMiss.key_hash.in_(hashes))).all(),
            *s.execute(select(JobKey.key_hash, JobKey.key, Job.created_at).join(Job, Job.id == JobKey.job_id)
                       .where(Job.kernel == kernel, Job.kernel_version == kernel_version,
                              JobKey.key_hash.in_(hashes))).all()]
    out: dict[str, tuple] = {}
    for key_hash, key, at in rows:
        sig = key.get("signature") if isinstance(key, dict) else None
        if sig is not None and (key_hash not in out or at > out[key_hash][0]):
            out[key_hash] = (at, sig)
    return {h: sig for h, (_, sig) in out.items()}


def tuned_since(miss=RuntimeMiss):
    """The current bests of a miss row's kernel version, key, class and stack: correlated to `miss`,
    for `~tuned_since().exists()` (a key tuned since it was missed)."""
    return (select(BestConfig.id)
            .join(DeviceClass, DeviceClass.id == BestConfig.device_class_id)
            .join(StackFingerprint, StackFingerprint.id == BestConfig.fingerprint_id)
            .where(BestConfig.kernel == miss.kernel, BestConfig.kernel_version == miss.kernel_version,
                   BestConfig.key_hash == miss.key_hash, DeviceClass.slug == miss.device_class,
                   StackFingerprint.hash == miss.fingerprint, BestConfig.superseded_at.is_(None)))


def _within_cap(s: Session, rows: list[dict[str, Any]], max_rows: int) -> list[dict[str, Any]]:
    """The rows of a batch the table has room for: every key it holds already, new ones up to max_rows."""
    if not rows:
        return rows
    columns = [getattr(RuntimeMiss, f) for f in _MISS_KEY]
    held = {tuple(r) for i in range(0, len(rows), 500) for r in s.execute(select(*columns).where(
        tuple_(*columns).in_([tuple(r[f] for f in _MISS_KEY) for r in rows[i:i + 500]])))}
    fresh = [r for r in rows if tuple(r[f] for f in _MISS_KEY) not in held]
    if not fresh:
        return rows
    room = max(0, max_rows - s.scalar(select(func.count()).select_from(RuntimeMiss)))
    keep = {id(r) for r in fresh[:room]}
    return [r for r in rows if tuple(r[f] for f in _MISS_KEY) in held or id(r) in keep]


def prune_misses(s: Session, keep_days: float) -> int:
    """Delete the miss rows not seen for keep_days (the janitor, hourly); returns how many."""
    cutoff = utcnow() - timedelta(days=keep_days)
    return s.execute(delete(RuntimeMiss).where(RuntimeMiss.last_seen < cutoff)).rowcount


def misses(s: Session, *, kernel: str | None = None, device_classes: Iterable[str] | None = None,
           min_count: int = 1, include_tuned: bool = False, limit: int | None = None) -> list[RuntimeMiss]:
    """Miss rows, most frequent first. A row whose key has been tuned since (a current best of the
    same kernel version, key, class and fingerprint) is left out unless include_tuned."""
    q = select(RuntimeMiss).where(RuntimeMiss.count >= min_count)
    if kernel is not None:
        q = q.where(RuntimeMiss.kernel == kernel)
    if device_classes is not None:
        q = q.where(RuntimeMiss.device_class.in_(list(device_classes)))
    if not include_tuned:
        q = q.where(~tuned_since(RuntimeMiss).exists())
    return list(s.scalars(q.order_by(RuntimeMiss.count.desc(), RuntimeMiss.last_seen.desc(), RuntimeMiss.id).limit(limit)))
