"""Export formats: the current best configurations written for those who read them. One module
per format, each with DESCRIPTION, WRITES ("file" or "directory") and `write(entries, output) ->
count`; adding a format is one module and one line in FORMATS. Entries are the bundle's
(tuner/formats/bundle.py `entry`). A format others tune in as well (vLLM's) also has `read_file`,
for `tuner import`. Importing this package loads no database code: the runtime imports
tuner.formats.bundle.
"""
from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Iterable

FORMATS = {"bundle": "tuner.formats.bundle",
           "vllm": "tuner.formats.vllm",
           "sglang": "tuner.formats.sglang",
           "vllm-lora": "tuner.formats.vllm_lora"}


def get(name: str):
    from tuner.errors import UserError

    if name not in FORMATS:
        raise UserError(f"unknown export format {str(name)[:40]!r}; use one of {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[name])


def inside(output: Path, names: Iterable[str]) -> dict[str, Path]:
    """{name: its path under output}, each resolved (symlinks followed) and checked to stay inside
    output, for every file of an export before the first is written. File names are made of
    database rows (the device names workers registered, a stack's Triton version): a name that
    leaves output is refused with UserError, one line, and nothing is written."""
    from tuner.errors import UserError

    root = Path(output).resolve()
    out = {}
    for name in names:
        try:
            path = (root / name).resolve()
        except (ValueError, OSError):  # a NUL byte, a symlink loop
            path = root
        if path == root or not path.is_relative_to(root):
            raise UserError(f"export file {str(name)[:80]!r} would land outside {str(output)[:80]}: its name comes "
                            "from a device name or stack version in the database (device_classes.device_names, "
                            "stack_fingerprints); correct that row. Nothing was written")
        out[name] = path
    return out


def current_entries(settings, kernel: str | None, device_class: str | None, version: bool = False,
                    model: str | None = None):
    """The bundle entries of the current best rows of one kernel (or all), of the classes a
    selector names (or all), of the keys a model serves (or all): what every format writes and
    GET /v1/bundle sends. version: only store.best_configs_version of those rows (a cheap token
    that changes whenever they do)."""
    from db import store
    from db.session import session_scope
    from devices.classes import device_names
    from tuner.database import open_for_read
    from tuner.formats.bundle import entry
    from tuner.queries import device_class_slugs

    served = None
    if model is not None:
        from tuner import presets

        served = presets.load(model).serves
    url = open_for_read(settings)
    slugs = device_class_slugs(url, device_class, None) if device_class else None
    with session_scope(url) as s:
        if version:
            return store.best_configs_version(s, kernel=kernel, device_classes=slugs)
        reported = store.device_names(s)
        entries = [entry(b, slug, fp, device_names(slug, reported.get(slug, ())))
                   for b, slug, fp in store.best_configs(s, kernel=kernel, device_classes=slugs)]
    return entries if served is None else [e for e in entries if served(e["kernel"], e["key"]["dims"])]


def export(settings, fmt: str, output: str, kernel: str | None, device_class: str | None,
           model: str | None = None) -> int:
    """`tuner export`: the current best rows (of one kernel, of the classes a selector names, of the
    keys a model serves) in format fmt at output. Nothing is written when anything is wrong."""
    from tuner.errors import UserError

    module = get(fmt)
    out = Path(output)
    parent = out if module.WRITES == "directory" else out.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist; create it"
        raise UserError(f"cannot write {str(output)[:80]}: {str(parent)[:80]} {what}")
    try:  # a file made and removed at once: whether this user may write there (root included)
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as exc:
        raise UserError(f"cannot write {str(output)[:80]}: {exc.strerror or exc} in {str(parent)[:80]}; "
                        "choose a writable place") from None
    entries = current_entries(settings, kernel, device_class, model=model)
    try:
        return module.write(entries, out)
    except OSError as exc:
        raise UserError(f"cannot write {str(output)[:80]}: {exc.strerror or exc}; choose a writable place") from None


def import_configs(settings, fmt: str, source: str, device_class: str | None) -> dict:
    """`tuner import`: others' tuned configurations (vLLM's files, one or a folder of them) stored as
    seeds the search tries first. Files of dtypes, block shapes or devices this service cannot
    place are listed and skipped; a malformed file stops the import before anything is written."""
    from db import store
    from db.session import session_scope
    from devices.classes import ALIASES, DEVICE_NAMES, resolve_device_class
    from search_spaces import registry
    from search_spaces.base import stable_hash, target_for
    from tuner.database import open_for_write
    from tuner.errors import UserError

    module = get(fmt)
    if not hasattr(module, "read_file"):
        raise UserError(f"format {fmt} cannot be imported; import one of: "
                        f"{', '.join(n for n in FORMATS if hasattr(get(n), 'read_file'))}")
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"no file or folder {str(source)[:80]}; give a vLLM config file or a folder of them")
    paths = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    selector = resolve_device_class(device_class) if device_class else None
    spec = registry.get(module.KERNEL)
    params = {p for arch in ("sm_90", "gfx942", "interpreter") for p in spec.space(target_for(arch))}
    read = []
    for p in paths:  # every file first: a malformed one stops the import before anything is written
        try:
            read.append((p, *module.read_file(p, params)))
        except module.Malformed as exc:
            raise UserError(f"malformed vLLM config: {exc}; nothing was imported") from None
    url = open_for_write(settings)
    with session_scope(url) as s:
        known = {**DEVICE_NAMES, **{slug: tuple(n) for slug, n in store.device_names(s).items() if n}}
    rows, skipped, dropped, files = [], [], set(), 0
    for p, got, why in read:
        where = got and (selector or module.device_selector(got["device"], known, ALIASES))
        if got and not where:
            why = f"device {got['device'][:40]} is not a known device class; give --device-class"
        if why:
            skipped.append({"file": p.name, "why": why})
            continue
        files += 1
        dropped |= set(got["dropped"])
        for dtype in got["dtypes"]:
            for m, config in got["table"].items():
                dims = {"E": got["E"], "N": got["N"], "M": m}
                rows.append({"kernel": spec.name, "device_selector": where, "dtype": dtype, "dims": dims,
                             "dims_hash": stable_hash(dims), "config": config, "source": f"{fmt}:{p.name}"[:300]})
    with session_scope(url) as s:
        n = store.write_imported(s, rows)
    return {"imported": n, "files": files, "skipped": skipped, "dropped_parameters": sorted(dropped)}
