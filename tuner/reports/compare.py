"""`tuner report compare`: two device classes side by side on the keys tuned on both.

Per key: each class's current best time, its TFLOP/s and GB/s (where the kernel counts its flops
and the bytes a launch must move: a skinny or memory-bound kernel is judged by the second), the
ratio (A's time over B's: above 1, B is faster), and, where list prices per hour are configured
(TUNER_DEVICE_PRICES), the cost of a million launches on each; per kernel, the geometric mean of
the ratios. Keys tuned on one class only are listed as such. Of a key's several current rows on a
side (other stacks, or several classes of a family), the newest stands for it.
"""
from __future__ import annotations

import math

from db import store
from db.session import session_scope
from devices.classes import KNOWN_DEVICES, matches
from search_spaces import registry
from keys import SpecError, TuningKey
from tuner.db_open import open_for_read
from tuner.display import dims_word, timing_label
from tuner.errors import UserError
from tuner.queries import device_class_slugs
from tuner.settings import Settings

KNOWN_DEVICES_SLUGS = [d.slug for d in KNOWN_DEVICES]


def _rate(key: dict, ms: float | None, count: str) -> float | None:
    """The kernel's count (`flops` or `bytes_moved`) of one launch of key over ms, per second."""
    if not ms:
        return None
    try:
        n = getattr(registry.get(key["kernel"]), count)(TuningKey.from_json(key))
    except (SpecError, KeyError, ValueError):  # a kernel this process has not registered
        return None
    return n / (ms * 1e-3) if n else None


def tflops(key: dict, ms: float | None) -> float | None:
    """The TFLOP/s of one launch of the key's kernel in ms, where the kernel counts its flops."""
    rate = _rate(key, ms, "flops")
    return rate / 1e12 if rate else None


def gbps(key: dict, ms: float | None) -> float | None:
    """The GB/s (10^9 bytes) of one launch in ms, where the kernel counts the bytes it must move."""
    rate = _rate(key, ms, "bytes_moved")
    return rate / 1e9 if rate else None


def cost_per_million(price_per_hour: float | None, ms: float | None) -> float | None:
    """What a million launches of ms each cost on a device billed at price_per_hour."""
    if price_per_hour is None or ms is None:
        return None
    return price_per_hour * (ms * 1e-3) * 1e6 / 3600.0


def geomean(xs: list[float]) -> float | None:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def report(settings: Settings, classes: list[str], kernel: str | None = None) -> dict:
    if len(classes) != 2:
        raise UserError(f"give two device classes to compare (--device-class A --device-class B), not {len(classes)}")
    url = open_for_read(settings)
    a, b = (device_class_slugs(url, c, None) for c in classes)
    both = set(a) & set(b) or {s for s in KNOWN_DEVICES_SLUGS if matches(classes[0], s) and matches(classes[1], s)}
    if both:
        raise UserError(f"{classes[0][:40]!r} and {classes[1][:40]!r} name the same class ({', '.join(sorted(both))}); "
                        "compare two different ones")
    prices = dict(settings.device_prices)
    newest: dict[tuple[str, str], dict] = {}  # (key_hash, side) -> the newest current row
    with session_scope(url) as s:
        for row, slug, fp in store.best_configs(s, kernel=kernel, device_classes=[*a, *b]):
            side = "a" if slug in a else "b"
            newest.setdefault((row.key_hash, side), {
                "kernel": row.kernel, "key": row.key, "dtype": row.dtype, "device_class": slug,
                "fingerprint": fp.hash, "config": row.config, "ms": row.median_ms,
                "price_per_hour": prices.get(slug)})
    keys, only = [], {"a": [], "b": []}
    for h in sorted({h for h, _ in newest}, key=lambda h: _order(newest, h)):
        pa, pb = newest.get((h, "a")), newest.get((h, "b"))
        if pa is None or pb is None:
            p = pa or pb
            only["a" if pa else "b"].append({"kernel": p["kernel"], "key": p["key"]["dims"], "dtype": p["dtype"],
                                             "device_class": p["device_class"], "ms": p["ms"]})
            continue
        keys.append({"kernel": pa["kernel"], "key": pa["key"]["dims"], "dtype": pa["dtype"], "key_hash": h,
                     "a": _side(pa), "b": _side(pb), "ratio": pa["ms"] / pb["ms"]})
    kernels = sorted({k["kernel"] for k in keys})
    summary = {kn: {"keys": sum(1 for k in keys if k["kernel"] == kn),
                    "geomean_ratio": geomean([k["ratio"] for k in keys if k["kernel"] == kn])} for kn in kernels}
    return {"a": classes[0], "b": classes[1], "a_classes": a, "b_classes": b, "kernel": kernel,
            "timing": timing_label([*a, *b]), "keys": keys, "only_a": only["a"], "only_b": only["b"],
            "per_kernel": summary, "prices": {slug: prices[slug] for slug in [*a, *b] if slug in prices}}


def _side(p: dict) -> dict:
    return {"device_class": p["device_class"], "fingerprint": p["fingerprint"], "config": p["config"],
            "ms": p["ms"], "tflops": tflops(p["key"], p["ms"]), "gbps": gbps(p["key"], p["ms"]),
            "cost_per_million": cost_per_million(p["price_per_hour"], p["ms"])}


def _order(newest: dict, h: str) -> tuple:
    p = newest.get((h, "a")) or newest.get((h, "b"))
    return (p["kernel"], p["dtype"], tuple(p["key"]["dims"].values()))


def figure(result: dict):
    """Per key tuned on both: each class's TFLOP/s (or time, where the kernel counts no flops)."""
    from tuner.reports import figures

    rows = result["keys"]
    use_tflops = bool(rows) and all(r["a"]["tflops"] and r["b"]["tflops"] for r in rows)
    field, unit = ("tflops", "TFLOP/s (higher is better)") if use_tflops else ("ms", "median ms (lower is better)")
    fig, ax = figures.new(max(6, 1.1 * len(rows) + 2), 4)
    xs = range(len(rows))
    for offset, side in ((-0.2, "a"), (0.2, "b")):
        ax.bar([x + offset for x in xs], [r[side][field] for r in rows], 0.4, label=result[side])
    for x, r in zip(xs, rows):
        ax.annotate(f"{r['ratio']:.2f}x", (x, max(r["a"][field], r["b"][field])), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [f"{r['kernel']}\n{dims_word(r['key'])}\n{r['dtype']}" for r in rows], fontsize=7)
    ax.set_ylabel(unit)
    ax.set_title(f"{result['a']} vs {result['b']}: time ratio A/B above each key ({result['timing']})", fontsize=9)
    ax.legend()
    return fig


def plot(result: dict, path: str) -> None:
    from tuner.reports import figures

    figures.save(figure(result), path)
