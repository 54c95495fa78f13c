"""How values are shown to people, the same in the CLI's tables and the dashboard's pages: a
configuration as one short word (`128x64x32 g8 w4 s2`), a time in milliseconds, a key's dims.

A table with a configuration's JSON wrapped one item per line at 80 columns; this word fits.
"""
from __future__ import annotations

from typing import Any, Mapping

# short names of the parameters kernels share; any other is written NAME=value
_SHORT = {"GROUP_M": "g", "num_warps": "w", "num_stages": "s", "waves_per_eu": "wpe",
          "matrix_instr_nonkdim": "mi", "kpack": "kp", "ROWS": "r"}


def config_word(config: Mapping[str, Any] | None) -> str:
    """{'BLOCK_M': 128, 'BLOCK_N': 64, 'BLOCK_K': 32, 'GROUP_M': 8, 'num_warps': 4, 'num_stages': 2}
    -> '128x64x32 g8 w4 s2': the tile (the BLOCK_* entries in their order), then the rest."""
    if not config:
        return "-"
    tile = [str(v) for k, v in config.items() if k.startswith("BLOCK")]
    rest = [f"{_SHORT[k]}{v}" if k in _SHORT else f"{k}={v}" for k, v in config.items() if not k.startswith("BLOCK")]
    return " ".join(["x".join(tile)] * bool(tile) + rest)


MICRO_BELOW_MS = 0.1  # a time under this many milliseconds is written in µs


def duration(value: float | None) -> str:
    """A time given in milliseconds, in the unit that keeps its digits: '8.00 µs' below 0.1 ms
    (written in ms it was '0.008', two digits lost), '0.250 ms', '1250.000 ms'. The one function
    every table and page prints a time with."""
    if value is None:
        return "-"
    if abs(value) < MICRO_BELOW_MS:
        return f"{value * 1000:.2f} µs"
    return f"{value:.3f} ms"


def ms(value: float | None) -> str:
    """A time in milliseconds with its unit chosen (duration)."""
    return duration(value)


def time_axis(values) -> tuple[float, str]:
    """(factor, unit) a plot of these times (in ms) draws them in: µs when every one is under
    0.1 ms, so an axis of a fast kernel does not read 0.000 to 0.010."""
    top = max((v for v in values if v is not None), default=None)
    return (1000.0, "µs") if top is not None and top < MICRO_BELOW_MS else (1.0, "ms")


def dims_word(dims: Mapping[str, Any], dtype: str | None = None) -> str:
    """{'M': 256, 'N': 256, 'K': 256}, 'float32' -> 'M=256,N=256,K=256 float32'."""
    text = ",".join(f"{k}={v}" for k, v in dims.items())
    return f"{text} {dtype}" if dtype else text


def speedup(value: float | None) -> str:
    return f"{value:.2f}x" if value else "-"


INTERPRETER_TIMING = "triton-interpreter (CPU; not GPU figures)"


def timing_label(slugs) -> str:
    """What the times of rows measured on these device classes are: interpreter timings are
    never shown as GPU figures."""
    return INTERPRETER_TIMING if any(s and str(s).startswith("cpu") for s in slugs) else "gpu"
