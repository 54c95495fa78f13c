"""What a stored row must pass before the runtime serves it, whatever its level and source: a
bundle file, a config server or a database role can be wrong or hostile, and what the runtime
serves is launched by a model as it is. A configuration passes when its names are exactly the
kernel's parameters on the live device (none missing, none extra), each value is an int (not a
bool, not "4": Triton would take either and compile something else), and the kernel's `check()`
accepts it for the key asked and the live device's limits. Checked once per answer, in the
resolver thread, before it enters the cache; never on a launch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from tuner.runtime.keys import first_line

Warn = Callable[[str, str], None]


@dataclass(frozen=True)
class Refusal:
    """Why a row is not served: `cause` names the kind of fault (one warning per cause), `message`
    says it for this row."""

    cause: str
    message: str


def refusal(spec: Any, config: Any, key: Any, target: Any) -> Refusal | None:
    """Why config must not reach spec's kernel for key on target, else None."""
    if not isinstance(config, Mapping):
        return Refusal("form", f"a {spec.name} configuration is a {type(config).__name__}, not a JSON object")
    try:
        space = spec.space(target)
    except Exception as exc:
        return Refusal("space", f"{spec.name} has no space on {target.arch}: {first_line(exc)}")
    extra = sorted(str(name)[:40] for name in config if name not in space)
    if extra:
        return Refusal(f"extra:{extra[0]}", f"{', '.join(extra)[:80]} is not a parameter of {spec.name}")
    missing = [name for name in space if name not in config]
    if missing:
        return Refusal(f"missing:{missing[0]}", f"{spec.name}'s {', '.join(missing)[:80]} is missing")
    for name in space:
        if type(config[name]) is not int:
            return Refusal(f"type:{name}", f"{name}={repr(config[name])[:40]} is not an integer")
    try:
        why = spec.check(dict(config), key, target)
    except Exception as exc:
        why = f"its check raised {first_line(exc)}"
    return Refusal("check", f"{spec.name}'s check refuses it for {key.label()}: {why}") if why else None


def screen_bundle(doc: dict, slug: str, target: Any, warn: Warn) -> dict:
    """doc (a bundle as a server answered it) with only the entries (and reported winners) of slug
    that this process could serve: a registered kernel at its current version, a key that is what
    its hash says, and a configuration that passes `refusal` for it. What is dropped is warned of
    once per cause."""
    specs: dict[str, Any] = {}
    out = {**doc, "entries": _screen(doc["entries"], slug, target, warn, specs)}
    if isinstance(doc.get("reported"), list):
        out["reported"] = _screen(doc["reported"], slug, target, warn, specs)
    return out


def _screen(entries: list, slug: str, target: Any, warn: Warn, specs: dict[str, Any]) -> list:
    from tuner.runtime.keys import spec_for

    kept = []
    for e in entries:
        try:
            name = e["kernel"]
            if name not in specs:
                try:
                    specs[name] = spec_for(name)
                except LookupError:
                    specs[name] = None
            spec = specs[name]
            if spec is None or e["kernel_version"] != spec.version or e["device_class"] != slug:
                continue  # never asked for by this process: not kept
            key = spec.make_key(e["key"]["dims"], e["dtype"])
            bad = (None if key.stable_hash == e["key_hash"] else
                   Refusal("key", f"a {name} entry's key_hash is not the hash of its key {key.label()}"))
            bad = bad or refusal(spec, e["config"], key, target)
        except Exception as exc:  # an entry off the format (a missing field, dims that are not ints)
            bad = Refusal("form", f"an entry is not a bundle entry ({first_line(exc)})")
            name = str(e.get("kernel") if isinstance(e, dict) else "?")[:40]
        if bad is None:
            kept.append(e)
        else:
            warn_refused(warn, name, bad, "dropped from the config server's bundle")
    return kept


def warn_refused(warn: Warn, kernel: str, bad: Refusal, what: str) -> None:
    warn(f"refused:{kernel}:{bad.cause}", f"tuner: a stored {kernel} configuration is refused ({bad.message}); {what}")
