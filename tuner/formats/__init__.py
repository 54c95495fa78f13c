"""Export formats: the current best configurations written for those who read them. One module
per format, each with DESCRIPTION, WRITES ("file" or "directory") and `write(entries, output, ask)
-> Written` (ask: what the export was asked beyond the rows); adding a format is one module and one
line in FORMATS. A format writes the kernels that declare it (`KernelSpec.exports`, read by
`declared`), or every kernel where its module says EVERY_KERNEL (the bundle). Entries are the bundle's
(tuner/formats/bundle.py `entry`). A format others tune in as well (vLLM's) also has `read_file`,
for `tuner import`. Importing this package loads no database code: the runtime imports
tuner.formats.bundle.
"""
from __future__ import annotations

import importlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

FORMATS = {"bundle": "tuner.formats.bundle",
           "vllm": "tuner.formats.vllm",
           "sglang": "tuner.formats.sglang",
           "vllm-lora": "tuner.formats.vllm_lora"}


@dataclass(frozen=True)
class Ask:
    """What an export was asked beyond its rows."""

    lora_slices: tuple[int, ...] = ()  # the num_slices a model's layers run (vllm-lora); () for vLLM's usual 1, 2, 3
    fill: bool = True  # vllm-lora: fill a num_slices not tuned from the nearest tuned one (else refuse)
    shipped: Path | None = None  # sglang: SGLang's own configs folder, copied where we tuned nothing


@dataclass(frozen=True)
class Written:
    count: int  # the tuned configurations written
    notes: tuple[str, ...] = ()  # what the user should know: what was filled, left out, copied


def get(name: str):
    from tuner.errors import UserError

    if name not in FORMATS:
        raise UserError(f"unknown export format {str(name)[:40]!r}; use one of {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[name])


def declared(fmt: str) -> tuple[str, ...]:
    """The registered kernels whose `exports` name fmt, in the registry's order: what the format
    writes (and, for vLLM's, reads). A kernel is picked up by declaring it, no list here to edit."""
    from search_spaces import registry

    return tuple(n for n in registry.names() if fmt in registry.KERNELS.load(n).exports)


def kernels_of(fmt: str) -> tuple[str, ...] | None:
    """The kernels format fmt writes: those that declare it, or None for every kernel (the bundle)."""
    return None if getattr(get(fmt), "EVERY_KERNEL", False) else declared(fmt)


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
                    model: str | None = None, limit: int | None = None):
    """The bundle entries of the current best rows of one kernel (or all), of the classes a
    selector names (or all), of the keys a model serves (or all): what every format writes and
    GET /v1/bundle sends. version: only store.best_configs_version of those rows (a cheap token
    that changes whenever they do). limit: the newest that many (a model's filter applies after it)."""
    from db import store
    from db.session import session_scope
    from devices.classes import device_names
    from tuner.db_open import open_for_read
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
                   for b, slug, fp in store.best_configs(s, kernel=kernel, device_classes=slugs, limit=limit)]
    return entries if served is None else [e for e in entries if served(e["kernel"], e["key"]["dims"])]


def reported_entries(settings, kernel: str | None, device_class: str | None, version: bool = False):
    """The winners drop-in kernels reported (db.reported) of one kernel (or all) on the classes a
    selector names (or all), as a bundle's "reported" entries: what GET /v1/bundle sends beside
    the bests, so that a runtime reading a config server serves them too. version: a token that
    changes whenever they do."""
    from db.reported import reported_list, reported_version
    from db.session import session_scope
    from tuner.db_open import open_for_read
    from tuner.formats.bundle import reported_entry
    from tuner.queries import device_class_slugs

    url = open_for_read(settings)
    slugs = device_class_slugs(url, device_class, None) if device_class else None
    with session_scope(url) as s:
        if version:
            return reported_version(s, kernel=kernel, device_classes=slugs)
        return [reported_entry(r) for r in reported_list(s, kernel=kernel, device_classes=slugs)]


def export(settings, fmt: str, output: str, kernel: str | None, device_class: str | None,
           model: str | None = None, ask: Ask = Ask()) -> Written:
    """`tuner export`: the current best rows (of one kernel, of the classes a selector names, of the
    keys a model serves) in format fmt at output. Nothing is written when anything is wrong, and an
    export that would write nothing says why."""
    from tuner.errors import UserError

    module = get(fmt)
    kernels = kernels_of(fmt)
    if kernel is not None and kernels is not None and kernel not in kernels:
        raise UserError(f"kernel {kernel[:40]} does not export to {fmt} (its KernelSpec.exports does not name it); "
                        f"{fmt} writes {', '.join(kernels) or 'no registered kernel'}. Nothing was written")
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
    if model is not None and fmt == "vllm-lora":
        from tuner import presets

        ask = Ask(presets.load(model).lora_slices(), ask.fill, ask.shipped)
    try:
        written = module.write(entries, out, ask)
    except OSError as exc:
        raise UserError(f"cannot write {str(output)[:80]}: {exc.strerror or exc}; choose a writable place") from None
    if written.count == 0 and not (ask.shipped and fmt == "sglang"):
        why = _nothing_to_write(settings, kernels, kernel, device_class, model, written.notes)
        if module.WRITES == "directory":  # no file at all: the server would read nothing of ours
            raise UserError(why)
        return Written(0, written.notes + (why.replace("nothing to export", "the bundle is empty", 1),))
    return written


def _nothing_to_write(settings, written: tuple[str, ...] | None, kernel: str | None, device_class: str | None,
                      model: str | None, notes: tuple[str, ...]) -> str:
    """Why an export found nothing: no current best of its kernels there; the imported seeds that
    wait to be measured, and how to measure them."""
    from db import store
    from db.session import session_scope
    from tuner.db_open import open_for_read
    from tuner.queries import device_class_slugs

    kernels = [k for k in written if kernel in (None, k)] if written is not None else [kernel]
    what = " or ".join(k for k in kernels if k) or "any kernel"
    where = f"device class {device_class}" if device_class else "any device class"
    why = f"nothing to export: no current best of {what} on {where}" + (f" for {model}" if model else "")
    if notes:
        return f"{why}; {notes[0]}"
    url = open_for_read(settings)
    slugs = set(device_class_slugs(url, device_class, None)) if device_class else None
    with session_scope(url) as s:
        seeds = [r for k in kernels if k for r in store.imported_configs(s, kernel=k)
                 if slugs is None or r.device_selector in slugs or r.device_selector == device_class]
    if not seeds:
        how = f"--model {model}" if model else f"{kernels[0] or 'KERNEL'} --shape ..."
        return f"{why}; tune its keys first (tuner submit {how} --device-class C)"
    from keys import SpecError
    from search_spaces import registry

    r = seeds[0]
    shape = ",".join(f"{k}={v}" for k, v in r.dims.items())
    try:  # a seed names only what its file does (vLLM's: E, N, M); the key's other dims are the user's
        rest = "".join(f",{n}=..." for n in registry.KERNELS.load(r.kernel).key_names if n not in r.dims)
    except SpecError:  # a seed of a kernel no longer registered
        rest = ""
    return (f"{why}; {len(seeds)} imported configuration(s) are seeds, not measurements: tuning their keys "
            f"measures them, e.g. tuner submit {r.kernel} --shape {shape}{rest} "
            f"--dtype {r.dtype} --device-class {r.device_selector} (or --model M for a preset's keys)")


def import_configs(settings, fmt: str, source: str, device_class: str | None) -> dict:
    """`tuner import`: others' tuned configurations (vLLM's files, one or a folder of them, searched
    recursively) stored as seeds the search tries first. What cannot be placed is skipped and listed
    with its reason: names of dtypes, block shapes or devices this service does not know (before the
    content is read), malformed files of a folder, entries out of range. A single named malformed
    file, or an import that finds nothing, is refused and writes nothing."""
    from db import store
    from db.session import session_scope
    from devices.classes import ALIASES, resolve_device_class
    from search_spaces import registry
    from keys import stable_hash
    from tuner.db_open import open_for_write
    from tuner.errors import UserError

    module = get(fmt)
    if not hasattr(module, "read_file"):
        raise UserError(f"format {fmt} cannot be imported; import one of: "
                        f"{', '.join(n for n in FORMATS if hasattr(get(n), 'read_file'))}")
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"no file or folder {str(source)[:80]}; give a vLLM config file or a folder of them")
    single = not path.is_dir()
    paths = [path] if single else sorted(p for p in path.rglob("*") if p.is_file())
    selector = resolve_device_class(device_class) if device_class else None
    bounds = {k: module.seed_bounds(registry.get(k)) for k in declared(fmt)}  # files name their kernel
    known = _known_devices(settings)
    read, skipped = [], []
    for p in paths:
        rel = str(p.relative_to(path)) if not single else p.name
        head, why = module.parse_name(p.name)
        where = head and (selector or module.device_selector(head["device"], known, ALIASES))
        if head and not where:
            why = f"device {head['device'][:40]} is not a known device class; give --device-class"
        if why:
            skipped.append({"file": rel[:120], "why": why})
            continue
        try:
            got, _ = module.read_file(p, bounds[head["kernel"]])
        except module.Malformed as exc:
            if single:
                raise UserError(f"malformed vLLM config: {exc}; nothing was imported") from None
            skipped.append({"file": rel[:120], "why": f"malformed: {exc}"})
            continue
        skipped += [{**s, "file": rel[:120]} for s in got["skipped"]]
        read.append((rel, where, got))
    rows = [{"kernel": got["kernel"], "device_selector": where, "dtype": dtype, "dims": dims,
             "dims_hash": stable_hash(dims), "config": config, "source": f"{fmt}:{rel}"[:300]}
            for rel, where, got in read for dtype in got["dtypes"] for m, config in got["table"].items()
            for dims in ({"E": got["E"], "N": got["N"], "M": m},)]
    if not rows:
        first = f" (first: {skipped[0]['file'][:60]}: {skipped[0]['why'][:80]})" if skipped else ""
        raise UserError(f"nothing to import from {str(source)[:80]}: {len(paths)} file(s), {len(skipped)} "
                        f"skipped{first}; give vLLM's fused-MoE config files (E=..,N=..,device_name=...json)")
    url = open_for_write(settings)
    with session_scope(url) as s:
        n = store.write_imported(s, rows)
    return {"imported": n, "files": len(read), "skipped": skipped,
            "dropped_parameters": sorted({d for _, _, got in read for d in got["dropped"]})}


def _known_devices(settings) -> dict[str, tuple[str, ...]]:
    """slug -> the device names torch reports for it: the known products', and those the service's
    workers reported (none while the embedded database does not exist: nothing is created here)."""
    from db import store
    from db.session import session_scope
    from devices.classes import DEVICE_NAMES
    from tuner.db_open import open_for_read, sqlite_path

    path = sqlite_path(settings.db_url)
    if path is not None and not path.exists():
        return dict(DEVICE_NAMES)
    with session_scope(open_for_read(settings)) as s:
        return {**DEVICE_NAMES, **{slug: tuple(n) for slug, n in store.device_names(s).items() if n}}
