"""`tuner devices`: what this machine can tune on."""
from __future__ import annotations

from search_spaces.base import SpecError
from tuner.errors import UserError
from tuner.settings import Settings


def live_identity(settings: Settings, device: str | None):
    """(DeviceClass, StackFingerprint, device string "cpu" | "cuda:N") of the device to run on."""
    from workers.device import probe
    from workers.fingerprint import live_fingerprint

    try:
        dc, _ = probe(device or settings.device)
        fp = live_fingerprint(dc, settings.fingerprint_override)
    except SpecError as exc:
        raise UserError(str(exc)) from None
    wanted = device or settings.device
    device_str = "cpu" if dc.target.is_interpreter else (wanted if wanted and ":" in wanted else "cuda:0")
    return dc, fp, device_str


def live_devices(settings: Settings) -> list[dict]:
    from workers.device import probe
    from workers.fingerprint import live_fingerprint

    names = ["cpu"]
    try:
        import torch
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    rows = []
    for name in names:
        dc, _ = probe(name)
        fp = live_fingerprint(dc, settings.fingerprint_override)
        rows.append({"device": name, "device_class": dc.slug, "aliases": list(dc.aliases), "vendor": dc.vendor,
                     "arch": dc.arch, "name": dc.name, "compute_units": dc.compute_units,
                     "memory_gb": dc.memory_gb, "fingerprint": {"hash": fp.hash, **fp.to_json()}})
    return rows
