"""What every `tuner` command shares: the Typer apps, the options several commands take, and how
results are printed (JSON, or tables that read at 80 columns). The commands live beside this
module, one module per kind of work; tuner/cli/__init__.py registers them and runs the app."""
from __future__ import annotations

import inspect
import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table


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


def option_of(name: str):
    """The typer parameter of a request field, as tuner/request_fields.py declares it."""
    from tuner.request_fields import REQUEST_FIELDS, REQUIRED

    (f,) = [f for f in REQUEST_FIELDS if f.name == name]
    default = ... if f.default is REQUIRED else f.default
    if f.flag is None:
        return typer.Argument(default, help=f.help)
    return typer.Option(default, f.flag, help=f.help)


def request_options(command: str):
    """A command that takes the request fields of `command` (tuner/request_fields.py) as its
    arguments and options, derived from their declaration; the function receives their values
    as one dict, its first parameter, and declares its own other options after it."""
    from tuner.request_fields import fields_of

    def wrap(func):
        fields = fields_of(command)
        own = list(inspect.signature(func, eval_str=True).parameters.values())[1:]
        declared = [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option_of(f.name),
                                      annotation=_annotation(f)) for f in fields]

        def command_function(**kwargs):
            return func({f.name: kwargs.pop(f.name) for f in fields}, **kwargs)

        params = [*declared, *own]
        command_function.__signature__ = inspect.Signature(params)
        command_function.__annotations__ = {p.name: p.annotation for p in params}
        command_function.__name__, command_function.__doc__ = func.__name__, func.__doc__
        command_function.__module__, command_function.__qualname__ = func.__module__, func.__qualname__
        return command_function
    return wrap


def _annotation(f):
    kind = list[f.kind] if f.many else f.kind
    return Optional[kind] if f.optional else kind


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
