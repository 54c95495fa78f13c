"""What a lookup answers, and with what provenance: the frozen `Answer` (level, source, distance,
age, why a default was served), the read-only configuration it carries, and the identity of
the live process (device class, fingerprint, the limits defaults and checks are computed for).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

# the levels of the fallback order, best first; every level after the first is a miss.
# REPORTED: the winner a drop-in kernel timed in some process for this very key (first reported
# wins), below any measured best, above another shape's
EXACT, OTHER_FINGERPRINT, REPORTED, NEAREST, DEFAULT = "exact", "other_fingerprint", "reported", "nearest", "default"
LEVELS = (EXACT, OTHER_FINGERPRINT, REPORTED, NEAREST, DEFAULT)
MISS_LEVELS = LEVELS[1:]


def _read_only(self, *args: Any, **kwargs: Any) -> None:
    raise TypeError("a configuration from tuner.runtime is read-only (it is shared by every later "
                    "lookup of the key); take a copy with dict(cfg) to change it")


class ReadOnlyConfig(dict):
    """A configuration as the runtime hands it out: a dict (JSON, `**cfg` and `==` work) whose
    mutating methods raise, so one caller cannot change what every later lookup returns.
    `dict(cfg)`, `cfg.copy()`, copy.copy and pickling give a plain, mutable dict."""

    __slots__ = ()
    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only

    def __reduce__(self):
        return dict, (dict(self),)

    def __copy__(self) -> dict:
        return dict(self)

    def __deepcopy__(self, memo: dict) -> dict:
        import copy

        return copy.deepcopy(dict(self), memo)


@dataclass(frozen=True)
class Identity:
    """Who is asking: the live device class (None when the probe failed: then nothing stored is
    served, only defaults), the stack fingerprint ("" until known), and the limits (a
    search_spaces.base.Target) that defaults and checks are computed for."""

    device_class: Any  # devices.classes.DeviceClass | None
    fingerprint: str
    target: Any

    @property
    def slug(self) -> str | None:
        return self.device_class.slug if self.device_class is not None else None


@dataclass(frozen=True)
class Answer:
    """One lookup's configuration and where it came from.

    level: exact | other_fingerprint | reported | nearest | default; source: the source's name (database,
    bundle, ...) or "default"; fingerprint, tuned_at and dims: those of the stored row served;
    distance: the log2 distance of a nearest shape (a 2x change of one dim counts 1); reason:
    why a default was served (nothing stored, the source unreachable, still waiting for it, ...).
    """

    kernel: str
    config: Mapping[str, Any]
    level: str
    source: str
    device_class: str | None
    fingerprint: str | None = None
    tuned_at: str | None = None
    dims: Mapping[str, int] | None = None
    distance: float | None = None
    reason: str | None = None
    unreachable: bool = False  # a default served because the source could not be read

    @property
    def is_miss(self) -> bool:
        return self.level != EXACT

    @property
    def age_s(self) -> float | None:
        """Seconds since the row served was tuned (None for a default)."""
        if not self.tuned_at:
            return None
        try:
            when = datetime.fromisoformat(self.tuned_at)
        except ValueError:
            return None
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        return max(0.0, (datetime.now(timezone.utc) - when).total_seconds())

    def to_json(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "config": dict(self.config), "level": self.level, "source": self.source,
                "device_class": self.device_class, "fingerprint": self.fingerprint, "tuned_at": self.tuned_at,
                "age_s": None if self.age_s is None else round(self.age_s, 1),
                "dims": dict(self.dims) if self.dims is not None else None, "distance": self.distance,
                "reason": self.reason}

    def describe(self) -> str:
        """One line: what answered, from where, how old or why."""
        where = f"{self.level} from {self.source}"
        if self.level == NEAREST and self.dims is not None:
            where += f" (shape {','.join(f'{k}={v}' for k, v in self.dims.items())}, distance {self.distance:g})"
        if self.fingerprint and self.level != DEFAULT:
            where += f", fingerprint {self.fingerprint}"
        if self.age_s is not None:  # a reported winner was timed by one process, not tuned by the fleet
            where += f", {'reported' if self.level == REPORTED else 'tuned'} {_age(self.age_s)} ago"
        return where + (f": {self.reason}" if self.reason else "")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
