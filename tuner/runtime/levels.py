"""The fallback order of one lookup, as a plain function of the kernel, the key, who asks and the
source: no cache, no thread, no setting. The runtime calls it off the launch path; `tuner lookup`
calls it directly.

  exact key on the live class and fingerprint
  -> the same key under another fingerprint of the class (newest first)
  -> the winner a drop-in kernel (@autotune, on_miss="autotune") timed for this very key in some
     process of the class and reported, the first reported (live fingerprint first): unmeasured by
     the fleet, but what every rank is served alike
  -> the nearest stored shape of the class (log2 distance; the live fingerprint first among equals)
  -> the kernel's default.
A row of any level is served only if it passes `checks.refusal` for the key asked on the live
class's limits (names, int values, the kernel's `check()`); one that does not is passed over for
the next. A nearest shape's tiles may legitimately not fit this key: that is quiet; anything
else refused (a row of this very key, or a row no kernel could take) is warned of, once per cause.
"""
from __future__ import annotations

from typing import Any

from tuner.runtime.answer import (DEFAULT, EXACT, NEAREST, OTHER_FINGERPRINT, REPORTED, Answer, Identity,
                                  ReadOnlyConfig)
from tuner.runtime.checks import Warn, refusal, warn_refused
from tuner.runtime.sources import Source, Stored

# nearest shapes tried (nearest first) before the default is served
NEAREST_TRIED = 8


class NoDefault(Exception):
    """The kernel's own default() raised for a key: the kernel's fault, never the source's (a source
    reported unreadable for it would serve every kernel defaults for TUNER_RUNTIME_RETRY_S)."""

    def __init__(self, cause: Exception):
        super().__init__(str(cause))
        self.cause = cause


def default_answer(spec: Any, key: Any, identity: Identity, reason: str, unreachable: bool = False) -> Answer:
    """The kernel's default for key on the identity's limits; NoDefault when the kernel's raises."""
    try:
        config = spec.default(key, identity.target)
    except Exception as exc:
        raise NoDefault(exc) from exc
    return Answer(spec.name, ReadOnlyConfig(config), DEFAULT, "default", identity.slug, reason=reason,
                  unreachable=unreachable)


def resolve(spec: Any, key: Any, identity: Identity, source: Source, warn: Warn | None = None) -> Answer:
    """The answer for key (a search_spaces.base.TuningKey). Raises what the source raises."""
    slug, fp, target = identity.slug, identity.fingerprint, identity.target
    refused: list[str] = []

    def passes(row: Stored, level: str) -> bool:
        bad = refusal(spec, row.config, key, target)
        if bad is None:
            return True
        refused.append(bad.message)
        if warn is not None and (level != NEAREST or bad.cause != "check"):
            warn_refused(warn, spec.name, bad, f"served the next level for {key.label()} instead")
        return False

    def stored(row: Stored, level: str, distance: float | None = None) -> Answer:
        return Answer(spec.name, ReadOnlyConfig(row.config), level, source.name, slug, row.fingerprint,
                      row.tuned_at, dict(row.dims), distance)

    rows = source.exact(key.kernel, key.version, key.stable_hash, slug)
    for row in sorted(rows, key=lambda r: r.fingerprint != fp):  # the live fingerprint first, else newest first
        level = EXACT if row.fingerprint == fp else OTHER_FINGERPRINT
        if passes(row, level):
            return stored(row, level)
    reported = source.reported(key.kernel, key.version, key.stable_hash, slug)
    for row in sorted(reported, key=lambda r: r.fingerprint != fp):  # stable: the first reported first
        if passes(row, REPORTED):
            return stored(row, REPORTED)
    dims = key.dim_map
    for row, distance in source.shapes(key.kernel, key.version, key.dtype, slug).ranked(dims, fp, NEAREST_TRIED):
        if distance == 0:  # the same shape: an exact row, already seen above
            continue
        if passes(row, NEAREST):
            return stored(row, NEAREST, round(distance, 3))
    why = f"nothing stored for {key.label()} on {slug}"
    if refused:
        why = (f"{len(refused)} stored configuration(s) for or near {key.label()} on {slug} are refused "
               f"(first: {refused[0][:160]})")
    return default_answer(spec, key, identity, why)
