"""What the caller's thread works out on a miss, before anything is asked of a source: who the
process is (the device probe), the kernel's spec, and the tuning key from the caller's values.

What the caller got wrong is told once (a warning per cause, through `warn`) and served the
kernel's default where one can be computed: an unsupported dtype (the default of a dtype the
kernel takes), a dim below 1 (that of dim 1), extra names (ignored), an unknown device (defaults
only, never another class's rows). Where no default can be computed, a LookupError says what to
fix: an unknown kernel or one whose module does not import, a key dim missing or not an integer.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

from tuner.runtime.answer import Identity

Warn = Callable[[str, str], None]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def dtype_name(dtype: Any) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def probe_identity(settings: Any, warn: Warn) -> Identity:
    """The live device class (its fingerprint is read later, off the caller's thread)."""
    from devices.classes import CPU_INTERPRETER
    from devices.probe import probe

    try:
        dc, _ = probe(settings.device)
        return Identity(dc, "", dc.target)
    except Exception as exc:  # e.g. TUNER_DEVICE=cuda:7 on a machine with two GPUs
        target = CPU_INTERPRETER.target
        try:  # defaults computed for what this machine has, if that can be told
            target = probe(None)[0].target
        except Exception:
            pass
        warn("device", f"tuner: cannot probe the device {settings.device!r} ({first_line(exc)}); "
                       "serving kernel defaults, never stored configurations")
        return Identity(None, "", target)


def with_fingerprint(identity: Identity, settings: Any, warn: Warn) -> Identity:
    """identity with the live stack's fingerprint (read from files, or nvidia-smi: off the caller's
    thread), TUNER_FINGERPRINT_OVERRIDE applied when it is usable."""
    from dataclasses import replace

    from devices.fingerprint import live_fingerprint

    dc = identity.device_class
    try:
        fp = live_fingerprint(dc, settings.fingerprint_override).hash
    except Exception as exc:  # a bad TUNER_FINGERPRINT_OVERRIDE must not stop the model
        warn("fingerprint", f"tuner: TUNER_FINGERPRINT_OVERRIDE is not usable ({first_line(exc)}); "
                            "using the live stack's fingerprint")
        fp = live_fingerprint(dc).hash
    return replace(identity, fingerprint=fp)


def spec_for(kernel: str) -> Any:
    from search_spaces import registry

    try:
        return registry.get(kernel)
    except Exception as exc:
        raise LookupError(f"tuner.runtime cannot serve kernel {str(kernel)[:80]!r}: {exc}") from None


def key_for(spec: Any, raw: dict, warn: Warn) -> tuple[Any, str | None]:
    """(TuningKey, why it is not the key asked for, or None)."""
    names = spec.key_names
    missing = [n for n in names if n not in raw]
    if missing:
        raise LookupError(f"{spec.name} is looked up by {', '.join(names)} and dtype; this lookup has no "
                          f"{', '.join(missing)} (with @tuned, map each with key={{NAME: ARGUMENT}})")
    dims, changed = {}, None
    for n in names:
        v = raw[n]
        try:
            value = operator.index(v)
        except TypeError:
            try:
                value = int(v) if float(v).is_integer() else None
            except (TypeError, ValueError, OverflowError):
                value = None
            if value is None:
                raise LookupError(f"{spec.name} key {n}={str(v)[:40]!r} is not an integer") from None
        if value < 1:
            changed = f"{n}={value}: serving the default for {n}=1"
            warn(f"dim:{spec.name}:{n}", f"tuner: {spec.name} looked up with {changed}")
            value = 1
        dims[n] = value
    extra = sorted(set(raw) - set(names) - {"dtype"})
    if extra:
        warn(f"extra:{spec.name}", f"tuner: {spec.name} is not keyed by {', '.join(extra)[:80]}; ignored")
    dtype = dtype_name(raw.get("dtype", "float32"))
    if dtype not in spec.dtypes:
        served = "float32" if "float32" in spec.dtypes else spec.dtypes[0]
        changed = f"dtype {dtype[:40]} is not one {spec.name} is tuned for ({', '.join(spec.dtypes)})"
        warn(f"dtype:{spec.name}:{dtype}", f"tuner: {changed}; serving its default for {served}")
        dtype = served
    return spec.make_key(dims, dtype), changed
