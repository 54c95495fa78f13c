"""The bundle: every current best configuration in one JSON file, written by `tuner export --format
bundle` and read by the runtime (TUNER_CONFIG_BUNDLE) where a deployment has no database access.
Writer and reader live here together; this module imports only the standard library (and the
service's clock), since the runtime imports it inside a model server.

    {"format": "tuner-bundle", "version": 1, "created_at": ISO-8601,
     "entries": [{"kernel", "kernel_version", "key_hash", "key": {"kernel", "version", "dims", "dtype"},
                  "dtype", "device_class", "fingerprint", "stack": {"driver", "runtime", "triton", "torch"},
                  "config", "median_ms", "speedup", "tuned_at", "device_names"}, ...],
     "reported": [{"kernel", "kernel_version", "key_hash", "key", "dtype", "device_class", "fingerprint",
                   "config", "median_ms", "reported_at"}, ...]}

"reported" (optional; GET /v1/bundle sends it, `tuner export` does not) holds the winners drop-in
kernels timed and reported (db.models.ReportedConfig), which a runtime serves below measured bests.

The file is written to a temporary name beside it and renamed, so a reader never sees half of it,
and it is readable by everyone (0644): a runtime often runs as another user than the exporter.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from db.clock import utcnow

FORMAT, VERSION = "tuner-bundle", 1
DESCRIPTION = "one JSON file for TUNER_CONFIG_BUNDLE (the runtime's source without a database)"
WRITES = "file"
EVERY_KERNEL = True  # no kernel declares the bundle: it holds them all


def entry(best: Any, device_class: str, fingerprint: Any, device_names: tuple[str, ...] = ()) -> dict[str, Any]:
    """The bundle entry of a best row (db.models.BestConfig), its class slug and fingerprint row, and
    the names torch reports for the class's devices (what vLLM's and SGLang's files are named by)."""
    return {"kernel": best.kernel, "kernel_version": best.kernel_version, "key_hash": best.key_hash,
            "key": best.key, "dtype": best.dtype, "device_class": device_class, "fingerprint": fingerprint.hash,
            "stack": fingerprint.fields, "config": best.config, "median_ms": best.median_ms,
            "speedup": best.speedup, "tuned_at": best.created_at.isoformat(), "device_names": list(device_names)}


def reported_entry(row: Any) -> dict[str, Any]:
    """The bundle "reported" entry of a reported winner (db.models.ReportedConfig)."""
    return {"kernel": row.kernel, "kernel_version": row.kernel_version, "key_hash": row.key_hash, "key": row.key,
            "dtype": row.dtype, "device_class": row.device_class, "fingerprint": row.fingerprint,
            "config": row.config, "median_ms": row.median_ms, "reported_at": row.reported_at.isoformat()}


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write text to path through a temporary file in the same directory, then rename it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def document(entries: list[dict[str, Any]], reported: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The bundle of these entries (and reported winners), in a stable order: what `write` writes
    and GET /v1/bundle sends."""
    def order(e: dict) -> tuple:
        return e["kernel"], e["key_hash"], e["device_class"], e["fingerprint"]

    doc = {"format": FORMAT, "version": VERSION, "created_at": utcnow().isoformat(),
           "entries": sorted(entries, key=order)}
    if reported:
        doc["reported"] = sorted(reported, key=order)
    return doc


def digest(doc: dict[str, Any]) -> str:
    """A hash of a bundle's entries (not of when it was made): equal for equal contents, the HTTP
    ETag of GET /v1/bundle."""
    import hashlib

    held = {"entries": doc["entries"], "reported": doc["reported"]} if doc.get("reported") else doc["entries"]
    return hashlib.sha256(json.dumps(held, sort_keys=True).encode()).hexdigest()[:32]


def write(entries: list[dict[str, Any]], output: Path, ask: Any = None):
    from tuner.formats import Written, inside

    doc = document(entries)
    output = Path(output)
    write_atomic(inside(output.parent, [output.name])[output.name], json.dumps(doc, indent=1, sort_keys=True))
    return Written(len(doc["entries"]))


class Bundle:
    """A bundle read into the two indexes a lookup needs."""

    def __init__(self, doc: Any, where: str = "bundle"):
        if (not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("entries"), list)
                or not isinstance(doc.get("reported", []), list)):
            raise ValueError(f"{where} is not a tuner bundle (format {FORMAT})")
        self.created_at = doc.get("created_at")
        self._exact: dict[tuple, list[tuple[str, dict, dict]]] = {}
        self._shapes: dict[tuple, list[tuple[dict, str, dict, str | None]]] = {}
        for e in doc["entries"]:
            self._exact.setdefault((e["kernel"], e["kernel_version"], e["key_hash"], e["device_class"]),
                                   []).append((e["fingerprint"], e["config"], e))
            self._shapes.setdefault((e["kernel"], e["kernel_version"], e["dtype"], e["device_class"]),
                                    []).append((e["key"]["dims"], e["fingerprint"], e["config"], e.get("tuned_at")))
        self._reported: dict[tuple, list[tuple[str, dict, dict]]] = {}
        for e in doc.get("reported", []):
            self._reported.setdefault((e["kernel"], e["kernel_version"], e["key_hash"], e["device_class"]),
                                      []).append((e["fingerprint"], e["config"], e))

    def exact(self, kernel: str, version: str, key_hash: str, slug: str) -> list[tuple[str, dict, dict]]:
        """(fingerprint, config, entry) of the key's current bests on the class."""
        return self._exact.get((kernel, version, key_hash, slug), [])

    def shapes(self, kernel: str, version: str, dtype: str, slug: str) -> list[tuple[dict, str, dict, str | None]]:
        """(dims, fingerprint, config, tuned_at) of every stored shape of the kernel version and dtype on the class."""
        return self._shapes.get((kernel, version, dtype, slug), [])

    def reported(self, kernel: str, version: str, key_hash: str, slug: str) -> list[tuple[str, dict, dict]]:
        """(fingerprint, config, entry) of the winners reported for the key on the class."""
        return self._reported.get((kernel, version, key_hash, slug), [])


def read(path: Path) -> Bundle:
    path = Path(path)
    return Bundle(json.loads(path.read_text()), str(path))
