"""Rows written straight through db.store for the read paths' tests (the API, the reports): best
configurations of device classes this machine does not have, and worker rows with a heartbeat.
The times are whatever the test says: these rows test readers, never report a measurement."""
from __future__ import annotations

from db import models, store
from db.clock import utcnow
from db.session import session_scope, upgrade
from devices.classes import KNOWN_DEVICES
from devices.fingerprint import StackFingerprint
from search_spaces import registry
from keys import config_hash

CONFIG = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}


def schema(url: str) -> str:
    upgrade(url)
    return url


def stack(driver: str = "555.1") -> dict:
    """A GPU stack with this driver, as a worker registers it (its hash a real stack hash)."""
    fp = StackFingerprint(driver, "cuda-12.8", "3.6.0", "2.13.0")
    return {"hash": fp.hash, **fp.to_json()}


def identity(s, slug: str, driver: str = "555.1") -> tuple[int, int]:
    dc = next(d for d in KNOWN_DEVICES if d.slug == slug)
    return store.store_identity(s, dc.to_json(), stack(driver))


def best(url: str, slug: str, dims: dict, ms: float, *, kernel: str = "matmul", dtype: str = "float16",
         driver: str = "555.1", config: dict | None = None, default_ms: float | None = None) -> str:
    """A current best of the key on the class (superseding the one before); returns the key hash."""
    key = registry.get(kernel).make_key(dims, dtype)
    config = config or CONFIG
    with session_scope(url) as s:
        dc_id, fp_id = identity(s, slug, driver)
        store.write_best(s, kernel=kernel, kernel_version=key.version, key_hash=key.stable_hash, key=key.to_json(),
                         dtype=dtype, device_class_id=dc_id, fingerprint_id=fp_id, config=config,
                         config_hash=config_hash(config), median_ms=ms, default_ms=default_ms,
                         speedup=default_ms / ms if default_ms else None, cv=0.01, trials=10, job_id=None)
    return key.stable_hash


def live_worker(url: str, name: str, slug: str, driver: str = "555.1") -> None:
    with session_scope(url) as s:
        dc_id, fp_id = identity(s, slug, driver)
        s.add(models.Worker(name=name, hostname="test", pid=1, device="cuda:0", device_class_id=dc_id,
                            fingerprint_id=fp_id, started_at=utcnow(), heartbeat_at=utcnow()))
