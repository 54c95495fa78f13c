"""Export formats: the current best configurations written for those who read them. One module
per format, each with DESCRIPTION, WRITES ("file" or "directory") and `write(entries, output) ->
count`; adding a format is one module and one line in FORMATS. Entries are the bundle's
(tuner/formats/bundle.py `entry`). Importing this package loads no database code: the runtime
imports tuner.formats.bundle.
"""
from __future__ import annotations

import importlib
from pathlib import Path

FORMATS = {"bundle": "tuner.formats.bundle", "vllm-lora": "tuner.formats.vllm_lora"}


def get(name: str):
    from tuner.errors import UserError

    if name not in FORMATS:
        raise UserError(f"unknown export format {str(name)[:40]!r}; use one of {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[name])


def current_entries(settings, kernel: str | None, device_class: str | None, version: bool = False):
    """The bundle entries of the current best rows of one kernel (or all), of the classes a
    selector names (or all): what every format writes and GET /v1/bundle sends. version: only
    store.best_configs_version of those rows (a cheap token that changes whenever they do)."""
    from db import store
    from db.session import session_scope
    from tuner.database import open_for_read
    from tuner.formats.bundle import entry
    from tuner.queries import device_class_slugs

    url = open_for_read(settings)
    slugs = device_class_slugs(url, device_class, None) if device_class else None
    with session_scope(url) as s:
        if version:
            return store.best_configs_version(s, kernel=kernel, device_classes=slugs)
        return [entry(b, slug, fp) for b, slug, fp in store.best_configs(s, kernel=kernel, device_classes=slugs)]


def export(settings, fmt: str, output: str, kernel: str | None, device_class: str | None) -> int:
    """`tuner export`: the current best rows (of one kernel, of the classes a selector names) in
    format fmt at output. Nothing is written when anything is wrong."""
    from tuner.errors import UserError

    module = get(fmt)
    out = Path(output)
    parent = out if module.WRITES == "directory" else out.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {str(output)[:80]}: directory {str(parent)[:80]} does not exist; create it")
    entries = current_entries(settings, kernel, device_class)
    try:
        return module.write(entries, out)
    except OSError as exc:
        raise UserError(f"cannot write {str(output)[:80]}: {exc.strerror or exc}; choose a writable place") from None
