"""Commands that read and move results: stored bests and their history, what the runtime would
serve (`lookup`) and what it missed, export and import."""
from __future__ import annotations

from typing import Optional

import typer

from tuner import formats
from tuner import settings as settings_mod
from tuner.cli.common import DtypeOpt, JsonOpt, ShapeOpt, app, class_stack, err, key_cell, print_json, show, table, when
from tuner.display import config_word, speedup
from tuner.display import ms as _ms


@app.command()
def best(kernel: str = typer.Argument(...), shape: list[str] = ShapeOpt, dtype: list[str] = DtypeOpt,
         device_class: Optional[str] = typer.Option(None, "--device-class", help="alias or slug; default: this machine's"),
         as_json: bool = JsonOpt) -> None:
    """The stored best configuration per key (current rows only)."""
    from tuner.queries import best_rows

    rows = best_rows(settings_mod.get(), kernel, shape, dtype, device_class)
    if as_json:
        return print_json(rows)
    t = table("key", "class / stack", "config", "time", "speedup")
    for r in rows:
        t.add_row(key_cell(r["key"]), class_stack(r), config_word(r["config"]) if r["config"] else "none stored",
                  _ms(r["median_ms"]), speedup(r.get("speedup")))
    show(t)


@app.command()
def history(kernel: str = typer.Argument(...), shape: list[str] = ShapeOpt, dtype: list[str] = DtypeOpt,
            device_class: Optional[str] = typer.Option(None, "--device-class"), as_json: bool = JsonOpt) -> None:
    """Every best configuration a key has had, newest first (superseded ones included)."""
    from tuner.queries import best_rows

    rows = best_rows(settings_mod.get(), kernel, shape, dtype, device_class, current_only=False)
    if as_json:
        return print_json(rows)
    t = table("key", "class / stack", "config", "time", "tuned (UTC)")
    for r in rows:
        t.add_row(key_cell(r["key"]), class_stack(r), config_word(r["config"]), _ms(r["median_ms"]),
                  f"{when(r['created_at'])[5:]}\n-> {when(r['superseded_at'])[5:] if r['superseded_at'] else 'current'}")
    show(t)


@app.command()
def export(fmt: str = typer.Option("bundle", "--format", help=f"One of: {', '.join(formats.FORMATS)}."),
           output: str = typer.Option(..., "--output", "-o", help="File (or directory) to write."),
           kernel: Optional[str] = typer.Option(None, "--kernel"),
           device_class: Optional[str] = typer.Option(None, "--device-class"),
           model: Optional[str] = typer.Option(None, "--model", help="Only the keys this model's layers run (any tp)."),
           fill: bool = typer.Option(True, "--fill/--no-fill", help="vllm-lora: fill a num_slices vLLM asks but "
                                     "nobody tuned from the nearest tuned one (default), or refuse."),
           with_shipped: Optional[str] = typer.Option(None, "--with-shipped", help="sglang: SGLang's own fused_moe_triton/"
                                                      "configs folder, copied in where we tuned nothing.")) -> None:
    """Export the current best configurations: our bundle, or vLLM's and SGLang's MoE config files."""
    from pathlib import Path

    from tuner.errors import UserError

    if with_shipped is not None and fmt != "sglang":
        raise UserError(f"--with-shipped is for --format sglang (SGLang's shipped configs); drop it for {fmt[:20]}")
    ask = formats.Ask(fill=fill, shipped=Path(with_shipped).expanduser() if with_shipped else None)
    written = formats.export(settings_mod.get(), fmt, output, kernel, device_class, model, ask)
    for note in written.notes:
        err.print(note, markup=False, highlight=False, soft_wrap=True)
    err.print(f"wrote {written.count} configuration(s) to {output}", markup=False, highlight=False)


@app.command("import")
def import_(source: str = typer.Argument(..., help="A vLLM config file, or a folder of them."),
            fmt: str = typer.Option("vllm", "--format", help="vllm"),
            device_class: Optional[str] = typer.Option(None, "--device-class", help="The class the files were "
                                                       "tuned on (default: read from their device_name)."),
            as_json: bool = JsonOpt) -> None:
    """Store others' tuned configurations as seeds that `auto` tries first (never as measured bests)."""
    result = formats.import_configs(settings_mod.get(), fmt, source, device_class)
    if as_json:
        return print_json(result)
    for s in result["skipped"]:
        err.print(f"skipped {s['file']}: {s['why']}", markup=False, highlight=False, soft_wrap=True)
    err.print(f"imported {result['imported']} configuration(s) from {result['files']} file(s)"
              + (f"; parameters this kernel has not, dropped: {', '.join(result['dropped_parameters'])}"
                 if result["dropped_parameters"] else "")
              + ". They are seeds, not measurements: the search tries them first when their keys are tuned "
              "(tuner submit/tune), and `tuner export` writes only measured bests", markup=False, highlight=False,
              soft_wrap=True)


@app.command("lookup")
def lookup_cmd(kernel: str = typer.Argument(..., help="A registered kernel (see `tuner kernels`)."),
               shape: list[str] = ShapeOpt, dtype: list[str] = DtypeOpt,
               device_class: Optional[str] = typer.Option(None, "--device-class", help="one class (a slug, or an "
                                                          "alias naming one); default: this machine's"),
               fingerprint: Optional[str] = typer.Option(None, "--fingerprint", help="the stack's hash (`tuner "
                                                         "devices`); default: this machine's"),
               as_json: bool = JsonOpt) -> None:
    """What tuner.runtime would serve for each key, and why: level, source, row age, distance."""
    from tuner.miss_intake import lookup_rows

    rows = lookup_rows(settings_mod.get(), kernel, shape, dtype, device_class, fingerprint)
    if as_json:
        return print_json(rows)
    t = table("key", "class", "config", "level", "source", "fingerprint", "age", "why")
    for r in rows:
        t.add_row(key_cell(r["key"]), r["device_class"], config_word(r["config"]), r["level"], r["source"],
                  r["fingerprint"] or "-", "-" if r["age_s"] is None else f"{r['age_s']:.0f} s",
                  r["reason"] or (f"distance {r['distance']:g} from {r['dims']}" if r["distance"] is not None else "-"))
    show(t)


misses_app = typer.Typer(help="What model processes were served from a fallback level (see `tuner retune --misses`).")
app.add_typer(misses_app, name="misses")


@misses_app.callback(invoke_without_command=True)
def misses(ctx: typer.Context, kernel: Optional[str] = typer.Option(None, "--kernel"),
           device_class: Optional[str] = typer.Option(None, "--device-class"), as_json: bool = JsonOpt) -> None:
    """Keys served from a fallback level and not tuned since, most frequent first."""
    if ctx.invoked_subcommand is not None:
        return
    from tuner.miss_intake import list_misses

    rows = list_misses(settings_mod.get(), kernel, device_class)
    if as_json:
        return print_json(rows)
    t = table("kernel", "key", "class", "fingerprint", "level", "count", "first seen", "last seen")
    for r in rows:
        t.add_row(r["kernel"], ",".join(f"{k}={v}" for k, v in r["key"].items()) + f" {r['dtype']}",
                  r["device_class"], r["fingerprint"], r["level"], str(r["count"]), r["first_seen"], r["last_seen"])
    show(t)
    if not rows:
        err.print("no misses: every key looked up was served an exact configuration, or has been tuned since")


@misses_app.command("import")
def misses_import(file: str = typer.Argument(..., help="The JSON-lines file the runtime wrote (TUNER_MISS_FILE).")) -> None:
    """Load a bundle deployment's miss file into the database."""
    from tuner.miss_intake import import_file

    records, rows = import_file(settings_mod.get(), file)
    err.print(f"imported {records} miss record(s) into {rows} row(s)")
