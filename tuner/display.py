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


def ms(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


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
