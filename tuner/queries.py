"""Read commands over stored results: `tuner best` and `tuner history`."""
from __future__ import annotations

from sqlalchemy import select

from db import models, store
from db.session import session_scope
from devices.classes import matches, resolve_device_class
from devices.probe import probe
from tuner.database import open_for_read
from tuner.request import build_request
from tuner.settings import Settings


def device_class_slugs(url: str, device_class: str | None, settings: Settings) -> list[str]:
    """Stored device-class slugs that an alias or slug names; the live class when none is given.
    SpecError (one line at the CLI) for a selector that names no class."""
    if device_class is None:
        return [probe(settings.device)[0].slug]
    resolve_device_class(device_class)
    with session_scope(url) as s:
        slugs = s.scalars(select(models.DeviceClass.slug)).all()
    return [slug for slug in slugs if matches(device_class, slug)] or [device_class]


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
            found = store.best_configs(s, kernel=kernel, kernel_version=key.version, key_hash=key.stable_hash,
                                       device_classes=slugs, current=current_only)
            if not found and current_only:
                out.append({"key": key.label(), "device_class": ",".join(slugs), "fingerprint": None,
                            "config": None, "median_ms": None})
            for b, slug, fp in found:
                out.append({"key": key.label(), "device_class": slug, "fingerprint": fp.hash, "config": b.config,
                            "median_ms": b.median_ms, "default_ms": b.default_ms, "speedup": b.speedup,
                            "trials": b.trials, "job": b.job_id, "created_at": b.created_at.isoformat(),
                            "superseded_at": b.superseded_at.isoformat() if b.superseded_at else None})
    return out
