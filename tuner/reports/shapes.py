"""`tuner report shapes`: tuned speed against one varied dimension, the others fixed: the picture
a model architect uses to pick a hidden size (a dimension that is not a multiple of a large power
of two can cost a tile's worth of wasted work).

Per point: the current best time on the class, its TFLOP/s where the kernel counts its flops (its
inverse time otherwise), whether the value is a power of two, and whether the point is a dip:
more than DIP below the line through its two neighbours (so a steady slope is none; the first and
last points have one neighbour and are never called dips). Points of the requested range that
are not tuned yet are listed as missing.
"""
from __future__ import annotations

from db import store
from db.session import session_scope
from search_spaces import registry
from keys import SpecError
from tuner.db_open import open_for_read
from tuner.display import timing_label
from tuner.errors import UserError
from tuner.queries import device_class_slugs
from tuner.reports.compare import tflops
from tuner.request import parse_shape
from tuner.settings import Settings
from tuner.sweep import parse_vary

DIP = 0.10


def report(settings: Settings, kernel: str, vary: str, shape: str | None, device_class: str,
           dtype: str = "float32") -> dict:
    try:
        spec = registry.get(kernel)
    except SpecError as exc:
        raise UserError(str(exc)) from None
    name, wanted = parse_vary(vary, require_values=False)
    if name not in spec.key_names:
        raise UserError(f"{kernel} has no dimension {name!r} to vary; its key is {', '.join(spec.key_names)}")
    fixed = {}
    for k, v in (parse_shape(shape) if shape else {}).items():
        if k not in spec.key_names or not v.isdigit():
            raise UserError(f"--shape {k}={v[:40]!r}: {kernel}'s key is {', '.join(spec.key_names)}, each a positive "
                            "integer")
        fixed[k] = int(v)
    url = open_for_read(settings)
    slugs = device_class_slugs(url, device_class, None)
    by_value: dict[int, dict] = {}
    with session_scope(url) as s:
        for row, slug, fp in store.best_configs(s, kernel=kernel, kernel_version=spec.version, dtype=dtype,
                                                device_classes=slugs):
            dims = row.key["dims"]
            if name not in dims or any(dims.get(k) != v for k, v in fixed.items()):
                continue
            if wanted and dims[name] not in wanted:
                continue
            by_value.setdefault(dims[name], {"value": dims[name], "dims": dims, "ms": row.median_ms,
                                             "tflops": tflops(row.key, row.median_ms), "config": row.config,
                                             "device_class": slug, "fingerprint": fp.hash})
    points = [by_value[v] for v in sorted(by_value)]
    speed = "tflops" if points and all(p["tflops"] for p in points) else "per_ms"
    for p in points:
        p["per_ms"] = 1.0 / p["ms"]
        p["power_of_two"] = p["value"] > 0 and p["value"] & (p["value"] - 1) == 0
    for i, p in enumerate(points):
        p["below_neighbours"], p["dip"] = 0.0, False
        if 0 < i < len(points) - 1:  # the ends have one neighbour: a slope, not a dip, as far as one can tell
            left, right = points[i - 1], points[i + 1]
            # the line through its neighbours at its value: a steady slope is no dip
            trend = left[speed] + (right[speed] - left[speed]) * (p["value"] - left["value"]) / (right["value"] - left["value"])
            p["below_neighbours"] = 1 - p[speed] / trend if trend > 0 else 0.0
            p["dip"] = p["below_neighbours"] > DIP
    return {"kernel": kernel, "vary": name, "fixed": fixed, "dtype": dtype, "device_class": device_class,
            "classes": slugs, "timing": timing_label(slugs or [device_class]), "speed": speed, "points": points,
            "dips": [p["value"] for p in points if p["dip"]],
            "missing": [v for v in wanted if v not in by_value]}


def figure(result: dict):
    """Speed against the varied value; powers of two marked, dips named."""
    from tuner.reports import figures

    pts = result["points"]
    speed = result["speed"]
    label = "TFLOP/s (tuned)" if speed == "tflops" else "1 / median ms (tuned)"
    fig, ax = figures.new(8, 4)
    xs, ys = [p["value"] for p in pts], [p[speed] for p in pts]
    ax.plot(xs, ys, "-o", color="tab:blue", markersize=4, label="tuned best")
    pow2 = [p for p in pts if p["power_of_two"]]
    if pow2:
        ax.scatter([p["value"] for p in pow2], [p[speed] for p in pow2], s=90, facecolors="none",
                   edgecolors="tab:green", linewidths=2, label="power of two", zorder=3)
    for p in pts:
        if p["dip"]:
            ax.annotate(f"{p['value']}: -{p['below_neighbours']:.0%}", (p["value"], p[speed]), xytext=(0, -14),
                        textcoords="offset points", ha="center", color="red", fontsize=8)
    fixed = ",".join(f"{k}={v}" for k, v in result["fixed"].items())
    ax.set_xlabel(f"{result['vary']} ({fixed} {result['dtype']})".replace("( ", "("))
    ax.set_ylabel(label)
    ax.set_title(f"{result['kernel']} on {result['device_class']}: dips >{DIP:.0%} below their neighbours in red "
                 f"({result['timing']})", fontsize=9)
    if pts:
        ax.legend(fontsize=8)
    return fig


def plot(result: dict, path: str) -> None:
    from tuner.reports import figures

    figures.save(figure(result), path)
