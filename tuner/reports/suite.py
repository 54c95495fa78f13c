"""The shape-suite report (bench/gpu_suite.py's results): summary, table and plot.

Read by `tuner report suite` and written by the benchmark, so both say the same thing."""
from __future__ import annotations

import json
import math
from pathlib import Path

from tuner.errors import UserError

CONTENDERS = ("tuned", "default", "autotune", "torch")
LARGE_M = 1024  # "large shapes" of the cuBLAS target: M >= this


def load(path: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"no suite results at {path}: run `python bench/gpu_suite.py` first") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read suite results {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != "tuner-suite" or not isinstance(doc.get("rows"), list):
        raise UserError(f"{path} is not a results file of bench/gpu_suite.py (format tuner-suite)")
    return doc


def _geomean(xs: list[float]) -> float | None:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def summary(doc: dict) -> dict:
    rows = doc["rows"]
    over_default = [r["default"]["ms"] / r["tuned"]["ms"] for r in rows]
    over_autotune = [r["autotune"]["ms"] / r["tuned"]["ms"] for r in rows]
    of_torch_large = [r["torch"]["ms"] / r["tuned"]["ms"] for r in rows if r["M"] >= LARGE_M]
    return {"geomean_speedup_over_default": _geomean(over_default),
            "geomean_speedup_over_autotune": _geomean(over_autotune),
            "min_fraction_of_torch_at_large_shapes": min(of_torch_large) if of_torch_large else None,
            "geomean_fraction_of_torch_at_large_shapes": _geomean(of_torch_large),
            "tuning_s": {c: sum(r[c].get("tuning_s", 0.0) for r in rows) for c in CONTENDERS},
            "all_correct": all(r[c].get("correct", True) for r in rows for c in CONTENDERS)}


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def markdown(doc: dict) -> str:
    s = doc.get("summary") or summary(doc)
    lines = [f"# Shape suite: tuned vs default vs triton.autotune vs torch.matmul ({doc['device_class']})", "",
             f"- device: {doc.get('device_name', doc['device_class'])}; stack: "
             + ", ".join(f"{k}={v}" for k, v in doc["fingerprint"].items() if k != "hash"),
             f"- date: {doc['date']}; dtype {doc['dtype']}; tuner budget {doc['trials']} trials per shape; "
             f"timing: {doc['timing']}; {doc['rounds']} interleaved rounds", "",
             "| M | N | K | tuned ms | TFLOP/s | default ms | TFLOP/s | autotune ms | TFLOP/s | torch ms | TFLOP/s "
             "| tuned vs default | tuned vs torch | tuning s (tuner / autotune) |",
             "|" + "---:|" * 14]
    for r in doc["rows"]:
        t, d, a, c = (r[k] for k in CONTENDERS)
        lines.append(f"| {r['M']} | {r['N']} | {r['K']} | {t['ms']:.4f} | {t['tflops']:.3g} | {d['ms']:.4f} | "
                     f"{d['tflops']:.3g} | {a['ms']:.4f} | {a['tflops']:.3g} | {c['ms']:.4f} | {c['tflops']:.3g} | "
                     f"{d['ms'] / t['ms']:.2f}x | {c['ms'] / t['ms']:.2f}x | {t['tuning_s']:.0f} / {a['tuning_s']:.0f} |")
    lines += ["", f"- geometric mean speedup of tuned over default: {_f(s['geomean_speedup_over_default'], '.3f')}x "
              "(target >= 1.15)",
              f"- tuned as a fraction of torch.matmul at M >= {LARGE_M}: min {_f(s['min_fraction_of_torch_at_large_shapes'], '.3f')}, "
              f"geometric mean {_f(s['geomean_fraction_of_torch_at_large_shapes'], '.3f')} (target >= 0.95)",
              f"- geometric mean speedup of tuned over triton.autotune: {_f(s['geomean_speedup_over_autotune'], '.3f')}x",
              "- total tuning time: " + ", ".join(f"{c} {v:.0f} s" for c, v in s["tuning_s"].items()),
              f"- every output matched the fp32 reference: {s['all_correct']}"]
    return "\n".join(lines)


def plot(doc: dict, path: str) -> None:
    """TFLOP/s per shape, one bar per contender."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(rows) + 2), 4.5))
    width = 0.8 / len(CONTENDERS)
    for i, name in enumerate(CONTENDERS):
        label = {"torch": "torch.matmul", "autotune": "triton.autotune"}.get(name, name)
        ax.bar([x + (i - 1.5) * width for x in range(len(rows))], [r[name]["tflops"] for r in rows], width, label=label)
    ax.set_xticks(range(len(rows)), [f"{r['M']}x{r['N']}x{r['K']}" for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("TFLOP/s")
    ax.set_title(f"matmul {doc['dtype']} on {doc['device_class']} ({doc['timing']})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
