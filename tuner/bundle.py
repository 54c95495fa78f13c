"""`tuner export --format bundle`: the current best configurations as one JSON file.

The runtime reads it through TUNER_CONFIG_BUNDLE where a deployment has no database access.
The file is written to a temporary name and renamed, so a reader never sees half of it.
"""
from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select

from db import models
from db.session import session_scope
from tuner.database import open_for_read
from tuner.errors import UserError
from tuner.settings import Settings

FORMATS = ("bundle",)


def bundle_entries(url: str, kernel: str | None, slugs: list[str] | None) -> list[dict]:
    q = (select(models.BestConfig, models.DeviceClass.slug, models.StackFingerprint)
         .join(models.DeviceClass, models.DeviceClass.id == models.BestConfig.device_class_id)
         .join(models.StackFingerprint, models.StackFingerprint.id == models.BestConfig.fingerprint_id)
         .where(models.BestConfig.superseded_at.is_(None))
         .order_by(models.BestConfig.kernel, models.BestConfig.key_hash))
    if kernel:
        q = q.where(models.BestConfig.kernel == kernel)
    if slugs:
        q = q.where(models.DeviceClass.slug.in_(slugs))
    with session_scope(url) as s:
        return [{"kernel": b.kernel, "kernel_version": b.kernel_version, "key_hash": b.key_hash, "key": b.key,
                 "dtype": b.dtype, "device_class": slug, "fingerprint": fp.hash, "stack": fp.fields,
                 "config": b.config, "median_ms": b.median_ms, "speedup": b.speedup,
                 "tuned_at": b.created_at.isoformat()} for b, slug, fp in s.execute(q).all()]


def export_bundle(settings: Settings, fmt: str, output: str, kernel: str | None,
                  device_class: str | None) -> int:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(output)
    if not out.parent.exists():
        raise UserError(f"cannot write {output}: directory {out.parent} does not exist")
    url = open_for_read(settings)
    slugs = None
    if device_class:
        from tuner.queries import device_class_slugs
        slugs = device_class_slugs(url, device_class, settings)
    entries = bundle_entries(url, kernel, slugs)
    doc = {"format": "tuner-bundle", "version": 1,
           "created_at": datetime.now(timezone.utc).isoformat(), "entries": entries}
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    os.replace(tmp, out)
    return len(entries)
