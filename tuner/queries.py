"""Read commands over stored results: `tuner best`."""
from __future__ import annotations

from sqlalchemy import select

from db import models
from db.session import session_scope
from search_spaces.base import SpecError
from tuner.database import open_for_read
from tuner.errors import UserError
from tuner.request import build_request
from tuner.settings import Settings


def device_class_slugs(url: str, device_class: str | None, settings: Settings) -> list[str]:
    """Stored device-class slugs that an alias or slug names; the live class when none is given."""
    from workers.device import matches, probe, resolve_device_class

    try:
        if device_class is None:
            return [probe(settings.device)[0].slug]
        resolve_device_class(device_class)
    except SpecError as exc:
        raise UserError(str(exc)) from None
    with session_scope(url) as s:
        slugs = s.scalars(select(models.DeviceClass.slug)).all()
    return [slug for slug in slugs if matches(device_class, slug)] or [device_class]


def best_query(kernel: str, key, slugs: list[str], current_only: bool):
    """Best rows of one key on the given device classes, newest first, with class slug and fingerprint."""
    q = (select(models.BestConfig, models.DeviceClass.slug, models.StackFingerprint.hash)
         .join(models.DeviceClass, models.DeviceClass.id == models.BestConfig.device_class_id)
         .join(models.StackFingerprint, models.StackFingerprint.id == models.BestConfig.fingerprint_id)
         .where(models.BestConfig.kernel == kernel, models.BestConfig.kernel_version == key.version,
                models.BestConfig.key_hash == key.stable_hash, models.DeviceClass.slug.in_(slugs))
         .order_by(models.BestConfig.created_at.desc(), models.BestConfig.id.desc()))
    return q.where(models.BestConfig.superseded_at.is_(None)) if current_only else q


def best_rows(settings: Settings, kernel: str, shapes: list[str], dtypes: list[str],
              device_class: str | None, current_only: bool = True) -> list[dict]:
    """`tuner best` (current rows; a row with config None when nothing is stored) and
    `tuner history` (every row, superseded ones too), newest first."""
    req = build_request(kernel, shapes, dtypes, trials=1)
    url = open_for_read(settings)
    slugs = device_class_slugs(url, device_class, settings)
    out = []
    with session_scope(url) as s:
        for key in req.keys:
            found = s.execute(best_query(kernel, key, slugs, current_only)).all()
            if not found and current_only:
                out.append({"key": key.label(), "device_class": ",".join(slugs), "fingerprint": None,
                            "config": None, "median_ms": None})
            for b, slug, fp in found:
                out.append({"key": key.label(), "device_class": slug, "fingerprint": fp, "config": b.config,
                            "median_ms": b.median_ms, "default_ms": b.default_ms, "speedup": b.speedup,
                            "trials": b.trials, "job": b.job_id, "created_at": b.created_at.isoformat(),
                            "superseded_at": b.superseded_at.isoformat() if b.superseded_at else None})
    return out
