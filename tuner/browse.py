"""The service's output as pages to browse (the dashboard's /bests, /seeds, /misses and the list
of retune runs): current bests filtered by device class, kernel, dtype and shape, a page at a
time, and the exports of such a selection; imported seeds; runtime misses; retune runs.

Every list is paged as the key page is: at most `limit` rows (default PAGE), and a cursor for
the next (`next`: the id to pass as `before`/`after`, or the offset for lists ordered by count).
"""
from __future__ import annotations

import io
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Integer, func, select

from db import lifecycle, models, store
from db.session import session_scope
from workers.job_request import RETUNE_RUN
from tuner.db_open import open_for_read
from tuner.errors import UserError
from tuner.queries import device_class_slugs

PAGE = 100
MAX_PAGE = 1000
MAX_EXPORT = 20000  # current bests one download holds; a selection of more is refused (narrow it)


@dataclass(frozen=True)
class Selection:
    """What /bests was asked for: each None (or empty) selects all."""

    kernel: str | None = None
    device_class: str | None = None
    dtype: str | None = None
    shape: str | None = None

    def query(self) -> dict:
        return {k: v for k, v in (("kernel", self.kernel), ("device_class", self.device_class),
                                  ("dtype", self.dtype), ("shape", self.shape)) if v}


def parse_shape(text: str | None) -> dict:
    """'M=64,N=512' -> {'M': 64, 'N': 512}: the dims a key must have (others are free)."""
    if not text or not text.strip():
        return {}
    dims = {}
    for part in text.replace(" ", "").split(","):
        name, eq, value = part.partition("=")
        if not (eq and name and value):
            raise UserError(f"shape {text[:80]!r}: write it NAME=value,... (e.g. M=64,N=512); a part may be left out")
        dims[name[:40]] = int(value) if value.lstrip("-").isdigit() else value[:80]
    return dims


def _selected(q, sel: Selection, url: str):
    """q narrowed to the current bests of the selection (q selects from BestConfig joined to its class)."""
    B = models.BestConfig
    q = q.where(B.superseded_at.is_(None))
    if sel.kernel:
        q = q.where(B.kernel == sel.kernel)
    if sel.dtype:
        q = q.where(B.dtype == sel.dtype)
    if sel.device_class:
        q = q.where(models.DeviceClass.slug.in_(device_class_slugs(url, sel.device_class, None)))
    for name, value in parse_shape(sel.shape).items():
        path = B.key[("dims", name)]  # json_extract on SQLite, #> on PostgreSQL
        q = q.where(path.as_integer() == value if isinstance(value, int) else path.as_string() == value)
    return q


def bests(settings, sel: Selection, before: int | None = None, limit: int = PAGE) -> dict:
    """A page of the selection's current bests, newest first (`next`: the `before` of the page
    after), and the kernels the whole selection holds (which exports apply)."""
    B = models.BestConfig
    url = open_for_read(settings)
    base = (select(B, models.DeviceClass.slug, models.StackFingerprint)
            .join(models.DeviceClass, models.DeviceClass.id == B.device_class_id)
            .join(models.StackFingerprint, models.StackFingerprint.id == B.fingerprint_id))
    q = _selected(base, sel, url).order_by(B.id.desc()).limit(limit + 1)
    if before is not None:
        q = q.where(B.id < before)
    kernels_q = _selected(select(B.kernel).join(models.DeviceClass, models.DeviceClass.id == B.device_class_id),
                          sel, url).distinct()
    with session_scope(url) as s:
        found = s.execute(q).all()
        kernels = sorted(s.scalars(kernels_q).all())
    rows = [{"id": b.id, "kernel": b.kernel, "key_hash": b.key_hash, "key": b.key["dims"], "dtype": b.dtype,
             "device_class": slug, "fingerprint": fp.hash, "stack": fp.fields, "config": b.config,
             "median_ms": b.median_ms, "default_ms": b.default_ms, "speedup": b.speedup, "trials": b.trials,
             "job": b.job_id, "created_at": b.created_at.isoformat()} for b, slug, fp in found[:limit]]
    return {"rows": rows, "next": rows[-1]["id"] if len(found) > limit else None, "kernels": kernels}


def formats_for(kernels: list[str]) -> list[str]:
    """The export formats that write any of these kernels (the bundle writes every one)."""
    from tuner import formats

    return [name for name in formats.FORMATS
            if kernels and (formats.kernels_of(name) is None or set(formats.kernels_of(name)) & set(kernels))]


def export(settings, fmt: str, sel: Selection) -> tuple[str, bytes, str]:
    """(file name, content, media type) of the selection's current bests in format fmt: the
    bundle's one JSON file, or a zip of the files a directory format writes. UserError (one line)
    when the format writes none of the selection's kernels."""
    from devices.classes import device_names
    from tuner import formats
    from tuner.formats.bundle import document, entry

    module = formats.get(fmt)
    B = models.BestConfig
    url = open_for_read(settings)
    q = _selected(select(B, models.DeviceClass.slug, models.StackFingerprint)
                  .join(models.DeviceClass, models.DeviceClass.id == B.device_class_id)
                  .join(models.StackFingerprint, models.StackFingerprint.id == B.fingerprint_id), sel, url)
    with session_scope(url) as s:
        found = s.execute(q.order_by(B.id).limit(MAX_EXPORT + 1)).all()
        reported = store.device_names(s)
        entries = [entry(b, slug, fp, device_names(slug, reported.get(slug, ()))) for b, slug, fp in found]
    if len(entries) > MAX_EXPORT:
        raise UserError(f"the selection holds more than {MAX_EXPORT} bests; narrow it (kernel, class) "
                        "or use `tuner export`")
    if not entries:
        raise UserError("nothing to export: the selection holds no current best")
    if fmt == "bundle":
        return "bundle.json", json.dumps(document(entries), indent=1).encode(), "application/json"
    writes = formats.declared(fmt)
    if not any(e["kernel"] in writes for e in entries):
        raise UserError(f"nothing to export: {fmt} writes {' and '.join(writes)}, "
                        "and the selection holds none of them")
    with tempfile.TemporaryDirectory(prefix="tuner-export-") as tmp:
        written = module.write(entries, Path(tmp), formats.Ask())
        if written.count == 0:
            raise UserError(f"nothing to export: {'; '.join(written.notes) or 'no file written'}")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for path in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
                z.write(path, str(path.relative_to(tmp)))
    return f"{fmt}-configs.zip", buf.getvalue(), "application/zip"


def seeds(settings, kernel: str | None, device_class: str | None, after: int | None = None,
          limit: int = PAGE) -> dict:
    """Imported configurations (`tuner import`), oldest first: seeds the search tries first,
    never measured bests. device_class: a class or family; rows imported for it or for one of its
    family's names."""
    I = models.ImportedConfig
    url = open_for_read(settings)
    q = select(I).order_by(I.id).limit(limit + 1)
    if kernel:
        q = q.where(I.kernel == kernel)
    if device_class:
        from devices.classes import resolve_device_class

        names = {resolve_device_class(device_class), device_class, *device_class_slugs(url, device_class, None)}
        q = q.where(I.device_selector.in_(sorted(names)))
    if after is not None:
        q = q.where(I.id > after)
    with session_scope(url) as s:
        found = s.scalars(q).all()
        rows = [{"id": r.id, "kernel": r.kernel, "device_class": r.device_selector, "dtype": r.dtype,
                 "dims": r.dims, "config": r.config, "source": r.source, "imported_at": r.imported_at.isoformat()}
                for r in found[:limit]]
    return {"rows": rows, "next": rows[-1]["id"] if len(found) > limit else None}


def misses(settings, kernel: str | None, device_class: str | None, offset: int = 0, limit: int = PAGE) -> dict:
    """Untuned runtime misses, most frequent first, from `offset` (`next`: the offset after)."""
    from tuner.miss_intake import list_misses

    found = list_misses(settings, kernel, device_class, offset + limit + 1)[offset:]
    return {"rows": found[:limit], "next": offset + limit if len(found) > limit else None}


def retune_runs(settings, offset: int = 0, limit: int = PAGE) -> dict:
    """Every retune run, newest first: when it was queued, its jobs and keys, and how many of
    them have ended (`next`: the offset after)."""
    J, K = models.Job, models.JobKey
    # grouped by its label: PostgreSQL takes GROUP BY run, not two copies of ->> with their own parameters
    run = J.request[RETUNE_RUN].as_string().label("run")
    q = (select(run, func.min(J.created_at), func.max(J.finished_at), func.count(func.distinct(J.id)),
                func.count(K.id), func.sum((K.state.in_(lifecycle.END_STATES)).cast(Integer)))
         .join(K, K.job_id == J.id).where(J.kind == "retune").group_by(run)
         .order_by(func.min(J.created_at).desc()).offset(offset).limit(limit + 1))
    with session_scope(open_for_read(settings)) as s:
        found = s.execute(q).all()
    rows = [{"run": r, "created_at": c.isoformat(), "finished_at": f.isoformat() if f else None, "jobs": j,
             "keys": k, "keys_ended": int(e or 0)} for r, c, f, j, k, e in found[:limit]]
    return {"rows": rows, "next": offset + limit if len(found) > limit else None}
