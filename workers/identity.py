"""Store the live device class and stack fingerprint as rows, once per process."""
from __future__ import annotations

from db import store
from workers.device import DeviceClass
from workers.fingerprint import StackFingerprint


def store_identity(session, dc: DeviceClass, fp: StackFingerprint) -> tuple[int, int]:
    """(device_class_id, fingerprint_id) for the live identity, created when new."""
    dc_row = store.get_or_create_device_class(
        session, slug=dc.slug, vendor=dc.vendor, arch=dc.arch, name=dc.name,
        compute_units=dc.compute_units, memory_gb=dc.memory_gb)
    fp_row = store.get_or_create_fingerprint(
        session, hash=fp.hash, driver=fp.driver, runtime=fp.runtime, triton=fp.triton, torch=fp.torch,
        fields=fp.to_json())
    session.flush()
    return dc_row.id, fp_row.id
