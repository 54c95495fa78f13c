"""The CLI's side of runtime misses: `tuner misses` (list), `tuner misses import FILE` (a bundle
deployment's JSON-lines file into the database), `tuner retune --misses` (queue tuning jobs for
the most frequent; the work is workers/miss_jobs.py's, shared with the nightly retune), and
`tuner lookup` (what a process on a device class would be served, and why); and the misses a
runtime posts to the API (POST /v1/misses).
"""
from __future__ import annotations

import json
from pathlib import Path

from db import store
from db.session import session_scope
from devices.classes import ALIASES, class_for, resolve_device_class
from search_spaces import registry
from tuner.db_open import open_for_read, open_for_write
from tuner.errors import UserError
from tuner.request import TuneRequest, build_request
from tuner.settings import Settings
from workers.miss_jobs import MIN_COUNT

DEFAULT_TOP = 10  # keys a `tuner retune --misses` queues unless `--top` says otherwise


def list_misses(settings: Settings, kernel: str | None, device_class: str | None,
                limit: int | None = None) -> list[dict]:
    """Untuned misses, most frequent first, the first `limit` (`tuner misses`, GET /v1/runtime-misses)."""
    from tuner.fleet import runtime_misses

    slugs = None
    if device_class is not None:
        selector = resolve_device_class(device_class)
        slugs = ALIASES.get(selector, (selector,))  # what `matches` accepts: the class, or its family's
    url = open_for_read(settings)
    with session_scope(url) as s:
        return runtime_misses(s, kernel=kernel, device_classes=slugs, limit=limit)


def import_file(settings: Settings, path: str) -> tuple[int, int]:
    """Load a JSON-lines miss file (tuner.runtime's FileSink) into the database: (records, rows).
    Every line is checked before anything is written."""
    from tuner.runtime.miss_tally import parse_record

    file = Path(path).expanduser()
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read miss file {str(path)[:80]!r}: {exc.strerror or type(exc).__name__}; "
                        "give the file the runtime wrote (TUNER_MISS_FILE)") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(parse_record(json.loads(line)))
        except ValueError as exc:  # json.JSONDecodeError is one
            raise UserError(f"{str(path)[:80]}:{n} is not a miss record ({str(exc).splitlines()[0][:120]}); "
                            "nothing imported") from None
    if not records:
        raise UserError(f"{str(path)[:80]} holds no miss records; nothing imported")
    return len(records), _store(settings, records)


def record_posted(settings: Settings, posted: list) -> tuple[int, int]:
    """Misses a runtime posted (POST /v1/misses; tuner.runtime's HttpSink): every record is checked
    before anything is written. (records, rows)."""
    from tuner.runtime.miss_tally import parse_record

    records = []
    for n, data in enumerate(posted):
        try:
            records.append(parse_record(data))
        except ValueError as exc:
            raise UserError(f"records[{n}] is not a miss record ({str(exc).splitlines()[0][:120]}); "
                            "nothing recorded") from None
    return len(records), _store(settings, records)


def _store(settings: Settings, records: list[dict]) -> int:
    from sqlalchemy.exc import DataError

    from db.reported import record_reported

    url = open_for_write(settings)
    try:
        with session_scope(url) as s:
            rows = store.record_misses(s, records)
            record_reported(s, records)  # first wins: a key's earlier winner stays
            return rows
    except DataError as exc:  # a value the checks let through and the database's types do not
        reason = str(exc.orig).strip().splitlines()[0][:120] if exc.orig is not None else "a value out of range"
        raise UserError(f"the database refused a miss record ({reason}); nothing recorded") from None


def request_from_misses(settings: Settings, kernel: str | None, trials: int, sampler: str, seed: int | None,
                        device: str | None) -> "TuneRequest":
    """`tuner tune KERNEL --from-misses`: the untuned keys this machine's device class missed on the
    registered version of KERNEL, most frequent first, each with the launch signature a drop-in
    kernel recorded (its inputs are rebuilt from it)."""
    from dataclasses import replace

    from devices.probe import probe
    from keys import SpecError, TuningKey

    if kernel is None:
        raise UserError("--from-misses tunes one kernel's misses: name it, e.g. tuner tune KERNEL --from-misses")
    try:
        spec = registry.get(kernel)
    except SpecError as exc:
        raise UserError(str(exc)) from None
    slug = probe(device or settings.device)[0].slug
    url = open_for_read(settings)
    with session_scope(url) as s:
        rows = [(m.key, m.kernel_version) for m in store.misses(s, kernel=kernel, device_classes=[slug])]
    found: dict[str, TuningKey] = {}
    for key_json, version in rows:
        if version == spec.version:
            key = TuningKey.from_json(key_json)
            found.setdefault(key.stable_hash, key)
    if not found:
        raise UserError(f"no untuned misses of {kernel[:80]} (version {spec.version}) on {slug}; launch it in a "
                        "model process with TUNER_DB_URL set first, or tune given shapes with --shape")
    keys = list(found.values())
    req = build_request(kernel, [",".join(f"{n}={v}" for n, v in keys[0].dims)], [keys[0].dtype], trials, sampler,
                        seed)
    return signed_request(settings, replace(req, keys=tuple(keys)))


def signed_request(settings: Settings, req: TuneRequest) -> TuneRequest:
    """The request, a drop-in kernel's keys each with the newest launch signature recorded for it
    (store.launch_signatures: a trial's inputs are rebuilt from it); UserError when a key has none,
    since no trial of it could run. Any other kernel's request is returned as it is."""
    from dataclasses import replace

    spec = registry.get(req.kernel)
    if not spec.needs_signature:
        return req
    with session_scope(open_for_read(settings)) as s:
        sigs = store.launch_signatures(s, kernel=req.kernel, kernel_version=spec.version,
                                       key_hashes=[k.stable_hash for k in req.keys])
    lacking = [k for k in req.keys if k.stable_hash not in sigs]
    if lacking:
        raise UserError(f"{req.kernel[:80]} is a drop-in kernel, its inputs rebuilt from a recorded launch, and no "
                        f"launch of {lacking[0].label()[:80]} was recorded: launch it in a model process with "
                        "TUNER_DB_URL set, then use tuner tune KERNEL --from-misses")
    return replace(req, signatures=tuple(sigs[k.stable_hash] for k in req.keys))


def retune_misses(settings: Settings, device_class: str | None, kernel: str | None, top: int | None,
                  min_count: int | None, dry_run: bool, holder: str | None = None) -> dict:
    """Queue tuning jobs for the `top` most frequent missed keys of each class with live workers."""
    from tuner.coordinator import retune_plumbing
    from workers.miss_jobs import enqueue_misses

    top = DEFAULT_TOP if top is None else top
    min_count = MIN_COUNT if min_count is None else min_count
    if top < 1:
        raise UserError(f"--top {top} is impossible: give the number of keys per device class to queue, e.g. 10")
    if min_count < 1:
        raise UserError(f"--min-count {min_count} is impossible: give the fewest misses a key needs, e.g. 1")
    match, url, send, holder = retune_plumbing(settings, device_class, dry_run, holder)
    return enqueue_misses(url, send, holder=holder,
                          dead_after_s=settings.worker_dead_after_s, trials=settings.retune_misses_trials,
                          top=top, min_count=min_count, device_class=match, kernel=kernel, dry_run=dry_run,
                          batch_trials=settings.batch_trials, parallel=settings.retune_parallel)


def lookup_rows(settings: Settings, kernel: str, shapes: list[str], dtypes: list[str], device_class: str | None,
                fingerprint: str | None) -> list[dict]:
    """What tuner.runtime would serve for each key to a process of device_class (default: this
    machine's) on the stack `fingerprint` (default: this machine's), with its provenance."""
    from devices.fingerprint import live_fingerprint
    from devices.probe import probe
    from tuner.runtime.answer import Identity
    from tuner.runtime.levels import NoDefault, resolve
    from tuner.runtime.sources import open_source

    req = build_request(kernel, shapes, dtypes, trials=1)
    dc = class_for(device_class) if device_class is not None else probe(settings.device)[0]
    if fingerprint is not None and not (0 < len(fingerprint) <= 80 and fingerprint.isalnum()):
        raise UserError(f"--fingerprint {fingerprint[:40]!r} is not a fingerprint hash; `tuner devices` prints them")
    fp = fingerprint or live_fingerprint(dc, settings.fingerprint_override).hash
    source = open_source(settings)
    if source.name == "database":
        open_for_read(settings)  # a missing or unreachable database is a one-line error here
    spec = registry.get(kernel)
    out = []
    for key in req.keys:
        try:
            answer = resolve(spec, key, Identity(dc, fp, dc.target), source)
        except NoDefault as exc:
            raise UserError(f"{kernel} has no default for {key.label()}: {type(exc.cause).__name__}: "
                            f"{str(exc.cause).strip()[:160]}") from None
        except Exception as exc:
            text = str(exc).strip().splitlines()
            raise UserError(f"cannot read {source.describe()}: {type(exc).__name__}: {text[0][:160] if text else ''}"
                            ) from None
        out.append({"key": key.label(), "shape": key.dim_map, "dtype": key.dtype, "device_class": dc.slug,
                    "live_fingerprint": fp, **answer.to_json(), "explained": answer.describe()})
    return out
