"""What every `tuner` command shares: the Typer apps, the options several commands take, and how
results are printed (JSON, or tables that read at 80 columns). The commands live beside this
module, one module per kind of work; tuner/cli/__init__.py registers them and runs the app."""
from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.table import Table

from search import strategies

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Tune Triton kernels per device class and stack; look the results up at load time.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema commands.")
app.add_typer(db_app, name="db")
report_app = typer.Typer(no_args_is_help=True, help="Reports over stored results.")
app.add_typer(report_app, name="report")
out = Console()
err = Console(stderr=True)

ShapeOpt = typer.Option(..., "--shape", help="Key dims, e.g. M=4096,N=4096,K=4096 (repeatable).")
DtypeOpt = typer.Option(["float32"], "--dtype", help="float16 | bfloat16 | float32 (repeatable).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
RotateOpt = typer.Option(1, "--rotate-buffers", help="Input sets to cycle through, one per timed repetition, "
                         "so that no cache keeps the inputs between repetitions (1 to 16).")
GraphOpt = typer.Option(False, "--cuda-graph", help="Time replays of a captured CUDA graph, which leaves out "
                        "the host's launch cost (GPU only): for kernels of a few microseconds.")
MaxCvOpt = typer.Option(None, "--max-cv", help="Measure a trial again, with twice the repetitions, when its "
                        "coefficient of variation exceeds this (e.g. 0.05).")
# tune and submit: a kernel and its shapes, or a model's layers
TuneShapeOpt = typer.Option([], "--shape", help="Key dims, e.g. M=4096,N=4096,K=4096 (repeatable; not with --model).")
TuneDtypeOpt = typer.Option([], "--dtype", help="float16 | bfloat16 | float32 (repeatable; default float32, "
                            "with --model the model's dtype).")
ModelOpt = typer.Option(None, "--model", help="A model preset (`tuner models`) or a model TOML file: tune every "
                        "layer it serves, MoE layers on fused_moe, dense ones on matmul.")
TpOpt = typer.Option(None, "--tp", help="With --model: the tensor-parallel size (default 1).")
BatchOpt = typer.Option(None, "--batch-sizes", help="With --model: tokens per batch, e.g. 1,16,256 "
                        "(default vLLM's 1,2,4,...,4096).")
LoraRanksOpt = typer.Option(None, "--lora-ranks", help="With --model: also the LoRA shrink and expand keys of "
                            "every dense layer at these adapter ranks, e.g. 8,16,64.")
MaxLorasOpt = typer.Option(None, "--max-loras", help="With --lora-ranks: adapters a batch holds (vLLM's "
                           "--max-loras; default 1).")
RoutingOpt = typer.Option("uniform", "--routing", help="How a MoE kernel's tokens are routed while timed: "
                          "uniform, or skewed (expert popularity 1/rank); a skewed job keeps a study of its own.")
SamplerOpt = typer.Option(strategies.DEFAULT, "--sampler", help=f"The search strategy: {', '.join(strategies.BUILTIN)}, "
                          "or one registered with TUNER_STRATEGY_MODULES.")


def print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def table(*columns: str, **kwargs) -> Table:
    """A table that reads at 80 columns: a configuration is one word (tuner.display.config_word)
    and never wraps; other cells wrap at spaces, never inside a word (see show)."""
    from rich import box

    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, **kwargs)
    for c in columns:
        t.add_column(c, no_wrap="config" in c or c == "job")
    return t


def show(t: Table) -> None:
    out.print(t)


def key_cell(label: str) -> str:
    """A key's cell: its dims over its dtype, so the column is as wide as the dims only (rich cuts
    a cell that it has to narrow below its longest line)."""
    return label.replace(" ", "\n", 1)


def when(iso: str | None) -> str:
    return iso[:16].replace("T", " ") if iso else "-"


def class_stack(r: dict) -> str:
    return f"{r['device_class']}\n{r['fingerprint'][:8]}" if r.get("fingerprint") else r["device_class"]
