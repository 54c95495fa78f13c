"""The fallback order of one lookup, as a plain function of the kernel, the key, who asks and the
source: no cache, no thread, no setting. The runtime calls it off the launch path; `tuner lookup`
calls it directly.

  exact key on the live class and fingerprint
  -> the same key under another fingerprint of the class (newest first)
  -> the nearest stored shape of the class (log2 distance; the live fingerprint first among equals)
  -> the kernel's default.
A row from a fallback level is served only if the kernel's `check()` accepts it for the
requested key on the live class's limits: a nearest shape's tiles may not fit this one.
"""
from __future__ import annotations

from typing import Any

from tuner.runtime.answer import DEFAULT, EXACT, NEAREST, OTHER_FINGERPRINT, Answer, Identity, ReadOnlyConfig
from tuner.runtime.sources import Source, Stored

# nearest shapes tried (nearest first) before the default is served
NEAREST_TRIED = 8


def _accepts(spec: Any, config: Any, key: Any, target: Any) -> bool:
    try:
        return spec.check(dict(config), key, target) is None
    except Exception:  # a stored config the kernel cannot even read (a parameter renamed since)
        return False


def default_answer(spec: Any, key: Any, identity: Identity, reason: str, unreachable: bool = False) -> Answer:
    """The kernel's default for key on the identity's limits."""
    return Answer(spec.name, ReadOnlyConfig(spec.default(key, identity.target)), DEFAULT, "default",
                  identity.slug, reason=reason, unreachable=unreachable)


def resolve(spec: Any, key: Any, identity: Identity, source: Source) -> Answer:
    """The answer for key (a search_spaces.base.TuningKey). Raises what the source raises."""
    slug, fp, target = identity.slug, identity.fingerprint, identity.target

    def stored(row: Stored, level: str, distance: float | None = None) -> Answer:
        return Answer(spec.name, ReadOnlyConfig(row.config), level, source.name, slug, row.fingerprint,
                      row.tuned_at, dict(row.dims), distance)

    rows = source.exact(key.kernel, key.version, key.stable_hash, slug)
    for row in rows:
        if row.fingerprint == fp:
            return stored(row, EXACT)
    refused = 0
    for row in rows:
        if _accepts(spec, row.config, key, target):
            return stored(row, OTHER_FINGERPRINT)
        refused += 1
    dims = key.dim_map
    for row, distance in source.shapes(key.kernel, key.version, key.dtype, slug).ranked(dims, fp, NEAREST_TRIED):
        if distance == 0:  # the same shape: an exact row, already seen above
            continue
        if _accepts(spec, row.config, key, target):
            return stored(row, NEAREST, round(distance, 3))
        refused += 1
    why = f"nothing stored for {key.label()} on {slug}"
    if refused:
        why = f"{refused} stored configuration(s) near {key.label()} on {slug} do not pass {spec.name}'s check for it"
    return default_answer(spec, key, identity, why)
