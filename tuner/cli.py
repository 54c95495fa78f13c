"""The `tuner` command line. Thin: it parses, calls the module that owns the work, and prints.

Every error a user can cause ends here as one line on stderr and exit status 2.
"""
from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from search import strategies
from tuner import formats
from tuner import settings as settings_mod
from tuner.display import INTERPRETER_TIMING, config_word, dims_word, speedup
from tuner.display import ms as _ms
from tuner.errors import UserError

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


def _print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


@app.command()
def kernels(as_json: bool = JsonOpt) -> None:
    """List the registered kernels."""
    from tuner.queries import kernel_rows

    rows = kernel_rows()
    if as_json:
        return _print_json(rows)
    # the module is in --json: a table row stays readable at 80 columns
    t = _table("kernel", "version", "key (example)", "dtypes", "valid there")
    for r in rows:
        t.add_row(r["name"], r["version"], "\n".join(f"{k}={v}" for k, v in r["example_shape"].items()),
                  "\n".join(r["dtypes"]), "\n".join(f"{n} {arch[:6]}" for arch, n in r["valid_configs"].items()))
    _print(t)


@app.command()
def devices(as_json: bool = JsonOpt) -> None:
    """The devices this machine can tune on, with their class and stack fingerprint."""
    from devices.probe import live_identity, visible_devices

    override = settings_mod.get().fingerprint_override
    rows = []
    for name in visible_devices():
        dc, fp, _ = live_identity(name, override)
        rows.append({"device": name, "device_class": dc.slug, "aliases": list(dc.aliases), "vendor": dc.vendor,
                     "arch": dc.arch, "name": dc.name, "compute_units": dc.compute_units,
                     "memory_gb": dc.memory_gb, "fingerprint": {"hash": fp.hash, **fp.to_json()}})
    if as_json:
        return _print_json(rows)
    t = _table("device", "class", "vendor", "arch", "fingerprint", "stack")
    for r in rows:
        fp = r["fingerprint"]
        t.add_row(r["device"], r["device_class"], r["vendor"], r["arch"], fp["hash"],
                  f"driver {fp['driver']}, {fp['runtime']}, triton {fp['triton']}, torch {fp['torch']}")
    _print(t)


@app.command()
def tune(kernel: Optional[str] = typer.Argument(None, help="A registered kernel (see `tuner kernels`); with "
                                                "--model, only the model's layers on it."),
         shape: list[str] = TuneShapeOpt, dtype: list[str] = TuneDtypeOpt,
         trials: int = typer.Option(20, "--trials", help="Measured trials per key."),
         sampler: str = SamplerOpt, seed: Optional[int] = typer.Option(None, "--seed"),
         device: Optional[str] = typer.Option(None, "--device", help="cpu (Triton interpreter) | cuda | cuda:N"),
         rotate_buffers: int = RotateOpt, cuda_graph: bool = GraphOpt, max_cv: Optional[float] = MaxCvOpt,
         routing: str = RoutingOpt, model: Optional[str] = ModelOpt, tp: Optional[int] = TpOpt,
         batch_sizes: Optional[str] = BatchOpt, lora_ranks: Optional[str] = LoraRanksOpt,
         max_loras: Optional[int] = MaxLorasOpt, as_json: bool = JsonOpt) -> None:
    """Tune KERNEL (or every layer of --model) here, in-process (no broker); re-running continues the same studies."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tuner.request import build_measurement, build_requests
    from tuner.tune import prepare, tune_local

    reqs = build_requests(kernel, shape, dtype, trials, sampler, seed,
                          build_measurement(rotate_buffers, cuda_graph, max_cv, routing), model, tp, batch_sizes,
                          lora_ranks, max_loras)
    if device is not None and device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"unknown --device {device[:40]!r}; use cpu, cuda or cuda:N")
    plans = [prepare(req, settings_mod.get(), device) for req in reqs]
    results = []
    with Progress(TextColumn("[bold]tuning {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, disable=as_json) as bar:
        for plan in plans:
            task = bar.add_task(f"{plan.req.kernel} ({len(plan.req.keys)} key(s))", total=trials * len(plan.req.keys))
            results.append(tune_local(plan, progress=lambda n, task=task: bar.advance(task, n),
                                      finalizing=None if as_json else lambda key: bar.console.print(
                                          f"re-measuring the fastest configurations of {key.label()} against the "
                                          "default (3 interleaved rounds)", highlight=False)))
    docs = [_tune_doc(req, result) for req, result in zip(reqs, results)]
    if as_json:  # one job's document; a list of them where --model made a job per kernel
        return _print_json(docs[0] if model is None else docs)
    for doc, result in zip(docs, results):
        _show_tune(doc, result)


def _tune_doc(req, result) -> dict:
    rows = [{"key": o.key.label(), "dims": o.key.dim_map, "dtype": o.key.dtype, "trials": o.trials,
             "config": o.config, "median_ms": o.median_ms, "default_ms": o.default_ms,
             "speedup": o.speedup, "search_s": round(o.search_s, 3), "finalize_s": round(o.finalize_s, 3),
             "kept_current_best": o.kept}
            for o in result.keys]
    timing = INTERPRETER_TIMING if result.interpreter else "gpu"
    return {"job": result.job_id, "kernel": req.kernel, "device_class": result.device_class,
            "fingerprint": result.fingerprint, "timing": timing, "measurement": req.measurement.to_json(),
            "startup_s": round(result.startup_s, 3), "keys": rows}


def _show_tune(doc: dict, result) -> None:
    from harness.protocol import Measurement

    rows, timing = doc["keys"], doc["timing"]
    how = Measurement.from_json(doc["measurement"]).describe()
    search_s = sum(r["search_s"] for r in rows)
    rate = f" ({sum(r['trials'] for r in rows) / search_s * 60:.0f} trials/min)" if search_s > 0 else ""
    t = _table("key", "trials", "best config", "best ms", "default ms", "speedup",
               title=f"job {result.job_id[:12]}: {doc['kernel']} on {result.device_class} (stack {result.fingerprint})",
               caption=f"timings: {timing}{'; ' + how if how else ''}; search {search_s:.1f} s{rate}, final "
                       f"re-measurement {sum(r['finalize_s'] for r in rows):.1f} s, harness start {result.startup_s:.1f} s")
    for r in rows:
        t.add_row(_key(r["key"]), str(r["trials"]), config_word(r["config"]) if r["config"] else "none ok",
                  _ms(r["median_ms"]), _ms(r["default_ms"]), speedup(r["speedup"]))
    _print(t)


def _table(*columns: str, **kwargs) -> Table:
    """A table that reads at 80 columns: a configuration is one word (tuner.display.config_word)
    and never wraps; other cells wrap at spaces, never inside a word (see _print)."""
    from rich import box

    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, **kwargs)
    for c in columns:
        t.add_column(c, no_wrap="config" in c or c == "job")
    return t


def _print(t: Table) -> None:
    out.print(t)


def _key(label: str) -> str:
    """A key's cell: its dims over its dtype, so the column is as wide as the dims only (rich cuts
    a cell that it has to narrow below its longest line)."""
    return label.replace(" ", "\n", 1)


@app.command()
def best(kernel: str = typer.Argument(...), shape: list[str] = ShapeOpt, dtype: list[str] = DtypeOpt,
         device_class: Optional[str] = typer.Option(None, "--device-class", help="alias or slug; default: this machine's"),
         as_json: bool = JsonOpt) -> None:
    """The stored best configuration per key (current rows only)."""
    from tuner.queries import best_rows

    rows = best_rows(settings_mod.get(), kernel, shape, dtype, device_class)
    if as_json:
        return _print_json(rows)
    t = _table("key", "class / stack", "config", "ms", "speedup")
    for r in rows:
        t.add_row(_key(r["key"]), _class_stack(r), config_word(r["config"]) if r["config"] else "none stored",
                  _ms(r["median_ms"]), speedup(r.get("speedup")))
    _print(t)


def _when(iso: str | None) -> str:
    return iso[:16].replace("T", " ") if iso else "-"


def _class_stack(r: dict) -> str:
    return f"{r['device_class']}\n{r['fingerprint'][:8]}" if r.get("fingerprint") else r["device_class"]


@app.command()
def export(fmt: str = typer.Option("bundle", "--format", help=f"One of: {', '.join(formats.FORMATS)}."),
           output: str = typer.Option(..., "--output", "-o", help="File (or directory) to write."),
           kernel: Optional[str] = typer.Option(None, "--kernel"),
           device_class: Optional[str] = typer.Option(None, "--device-class"),
           model: Optional[str] = typer.Option(None, "--model", help="Only the keys this model's layers run (any tp).")) -> None:
    """Export the current best configurations: our bundle, or vLLM's and SGLang's MoE config files."""
    n = formats.export(settings_mod.get(), fmt, output, kernel, device_class, model)
    err.print(f"wrote {n} configuration(s) to {output}")


@app.command("import")
def import_(source: str = typer.Argument(..., help="A vLLM config file, or a folder of them."),
            fmt: str = typer.Option("vllm", "--format", help="vllm"),
            device_class: Optional[str] = typer.Option(None, "--device-class", help="The class the files were "
                                                       "tuned on (default: read from their device_name)."),
            as_json: bool = JsonOpt) -> None:
    """Store others' tuned configurations as seeds that `auto` tries first (never as measured bests)."""
    result = formats.import_configs(settings_mod.get(), fmt, source, device_class)
    if as_json:
        return _print_json(result)
    err.print(f"imported {result['imported']} configuration(s) from {result['files']} file(s)"
              + (f"; parameters this kernel has not, dropped: {', '.join(result['dropped_parameters'])}"
                 if result["dropped_parameters"] else ""), soft_wrap=True)
    for s in result["skipped"]:
        err.print(f"skipped {s['file']}: {s['why']}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def models(as_json: bool = JsonOpt) -> None:
    """The model presets `--model` takes, and their layers."""
    from tuner import presets

    rows = [{"name": m.name, "source": m.source, "dtype": m.dtype,
             "layers": [{"kind": la.kind, "name": la.name, **dict(la.dims),
                         **({"split": la.split} if la.kind == "dense" else {})} for la in m.layers]}
            for m in presets.all_models()]
    if as_json:
        return _print_json(rows)
    t = Table("model", "dtype", "MoE layers: E,N,K,topk", "dense layers", "source")
    for r in rows:
        t.add_row(r["name"], r["dtype"],
                  " ".join(f"{la['E']},{la['N']},{la['K']},{la['topk']}" for la in r["layers"] if la["kind"] == "moe") or "-",
                  str(sum(la["kind"] == "dense" for la in r["layers"])), r["source"])
    out.print(t)


@app.command()
def submit(kernel: Optional[str] = typer.Argument(None, help="A registered kernel; with --model, only the "
                                                  "model's layers on it."),
           shape: list[str] = TuneShapeOpt, dtype: list[str] = TuneDtypeOpt,
           device_class: str = typer.Option(..., "--device-class", help="h100 | mi300x | cpu | a slug"),
           trials: int = typer.Option(20, "--trials", help="Measured trials per key, across all workers."),
           sampler: str = SamplerOpt, seed: Optional[int] = typer.Option(None, "--seed"),
           parallel: int = typer.Option(2, "--parallel", help="Batches in flight per key (workers that cooperate)."),
           rotate_buffers: int = RotateOpt, cuda_graph: bool = GraphOpt, max_cv: Optional[float] = MaxCvOpt,
           routing: str = RoutingOpt, model: Optional[str] = ModelOpt, tp: Optional[int] = TpOpt,
           batch_sizes: Optional[str] = BatchOpt, lora_ranks: Optional[str] = LoraRanksOpt,
           max_loras: Optional[int] = MaxLorasOpt,
           wait_: bool = typer.Option(False, "--wait", help="Wait until the job ends and print its status."),
           timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds to --wait at most."),
           as_json: bool = JsonOpt) -> None:
    """Queue a tuning job (one per kernel of --model) for a device class; prints the job ids. Needs the broker and database only."""
    from tuner.coordinator import submit as do_submit
    from tuner.request import build_measurement, build_requests

    reqs = build_requests(kernel, shape, dtype, trials, sampler, seed,
                          build_measurement(rotate_buffers, cuda_graph, max_cv, routing), model, tp, batch_sizes,
                          lora_ranks, max_loras)
    job_ids = [do_submit(settings_mod.get(), req, device_class, parallel) for req in reqs]
    if not wait_:
        if as_json:
            return _print_json({"job": job_ids[0]} if len(job_ids) == 1 else {"jobs": job_ids})
        return print("\n".join(job_ids))
    from tuner.coordinator import wait
    states = []
    for job_id in job_ids:
        err.print(f"job {job_id} queued; waiting")
        st = wait(settings_mod.get(), job_id, timeout)
        _show_status(st, as_json)
        states.append(st["state"])
    if any(state != "done" for state in states):
        raise typer.Exit(1)


@app.command()
def worker(device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | cuda:N"),
           name: Optional[str] = typer.Option(None, "--name", help="Worker node name (default: class-device-pid@host)."),
           loglevel: str = typer.Option("INFO", "--loglevel")) -> None:
    """Run a worker for one device: it consumes only the queues of its device class."""
    from tuner.worker import run_worker

    run_worker(settings_mod.get(), device, name, loglevel)


@app.command()
def jobs(limit: int = typer.Option(50, "--limit"), as_json: bool = JsonOpt) -> None:
    """Recent jobs, newest first."""
    from tuner.coordinator import jobs as list_jobs

    rows = list_jobs(settings_mod.get(), limit)
    if as_json:
        return _print_json(rows)
    t = _table("job", "kind", "kernel", "class", "state", "trials", "keys", "created (UTC)")
    for r in rows:
        t.add_row(r["job"][:12], r["kind"], r["kernel"], r["device_class"] or "local", r["state"], str(r["trials"]),
                  str(r["keys"]), _when(r["created_at"]))
    _print(t)


@app.command()
def status(job: str = typer.Argument(..., help="Job id (or a unique prefix of 6+ chars)."), as_json: bool = JsonOpt) -> None:
    """Per key: trials done, best so far, workers on it."""
    from tuner.coordinator import status as job_status

    _show_status(job_status(settings_mod.get(), job), as_json)


def _show_status(st: dict, as_json: bool) -> None:
    if as_json:
        return _print_json(st)
    from harness.protocol import Measurement

    how = Measurement.from_json(st.get("measurement")).describe()
    t = _table("key", "state", "trials", "best ms", "default", "best config", "workers",
               title=f"job {st['job'][:12]} {st['kernel']} on {st['device_class'] or 'this machine'}: {st['state']}",
               caption=f"timed with {how}" if how else None)
    for k in st["keys"]:
        failed = f" {k['failed_trials']} failed" if k["failed_trials"] else ""
        t.add_row(_key(dims_word(k["key"], k["dtype"])), k["state"], f"{k['trials_done']}/{k['budget']}{failed}",
                  _ms(k["best_ms_so_far"]), _ms(k.get("default_ms_so_far")), config_word(k["best_config_so_far"]),
                  ", ".join(k["workers"]) or "-")
    out.print(t)
    if st.get("note"):
        err.print(f"note: {st['note']}")
    if st.get("error"):
        err.print(f"error: {st['error']}")


@app.command()
def cancel(job: str = typer.Argument(...)) -> None:
    """Cancel a job: workers stop after their trial in flight."""
    from tuner.coordinator import cancel as do_cancel

    err.print(f"job {job}: {do_cancel(settings_mod.get(), job)}")


@app.command()
def retune(device_class: Optional[str] = typer.Option(None, "--device-class"),
           kernel: Optional[str] = typer.Option(None, "--kernel"),
           stale_only: bool = typer.Option(True, "--stale-only/--all",
                                           help="Only keys whose stack changed (default), or every current key."),
           dry_run: bool = typer.Option(False, "--dry-run", help="List what would be queued; queue nothing."),
           misses_: bool = typer.Option(False, "--misses", help="Instead: tuning jobs for the keys model processes "
                                        "were served most often from a fallback level (`tuner misses`)."),
           top: Optional[int] = typer.Option(None, "--top", help="With --misses: keys per device class (default 10)."),
           min_count: Optional[int] = typer.Option(None, "--min-count", help="With --misses: the fewest misses a "
                                                   "key needs (default 1)."),
           as_json: bool = JsonOpt) -> None:
    """Queue warm-started retune jobs for configurations tuned under another stack than live workers
    run; with --misses, tuning jobs for the keys model processes were served most from a fallback."""
    from tuner.coordinator import retune as do_retune

    if not misses_ and (top is not None or min_count is not None):
        raise UserError("--top and --min-count choose among misses: add --misses")
    if misses_:
        return _retune_misses(device_class, kernel, top, min_count, dry_run, as_json)
    result = do_retune(settings_mod.get(), device_class, kernel, stale_only, dry_run)
    if as_json:
        return _print_json(result)
    if result.get("locked_by_other"):
        err.print("another retune holds the lease; nothing queued")
    t = _table("job", "kernel", "device class", "keys", "budgets", "old -> new stack",
               title=f"retune run {result['run']}" + (" (dry run)" if dry_run else ""))
    for j in result["jobs"]:
        t.add_row(j.get("job", "-")[:12], j["kernel"], j["device_class"], str(len(j["keys"])),
                  ", ".join(map(str, j["budgets"])),
                  f"{', '.join(j['old_fingerprint'])}\n-> {', '.join(j['new_fingerprint'])}")
    _print(t)
    if not result["jobs"]:
        err.print("nothing stale: every current configuration was tuned under a stack that live workers run")


def _retune_misses(device_class, kernel, top, min_count, dry_run: bool, as_json: bool) -> None:
    from tuner.misses import retune_misses

    result = retune_misses(settings_mod.get(), device_class, kernel, top, min_count, dry_run)
    if as_json:
        return _print_json(result)
    if result.get("locked_by_other"):
        err.print("another retune of misses holds the lease; nothing queued")
    t = Table("job", "kernel", "device class", "key", "misses", "levels",
              title=f"retune of misses {result['run']}" + (" (dry run)" if dry_run else ""))
    for j in result["jobs"]:
        t.add_row(j.get("job", "-"), j["kernel"], j["device_class"],
                  ",".join(f"{k}={v}" for k, v in j["key"].items()) + f" {j['dtype']}", str(j["count"]),
                  ",".join(j["levels"]))
    out.print(t)
    for sk in result["skipped"]:
        err.print(f"skipped {sk['kernel']} {sk['key']} {sk['dtype']} on {sk['device_class']}: {sk['reason']}")


@app.command("lookup")
def lookup_cmd(kernel: str = typer.Argument(..., help="A registered kernel (see `tuner kernels`)."),
               shape: list[str] = ShapeOpt, dtype: list[str] = DtypeOpt,
               device_class: Optional[str] = typer.Option(None, "--device-class", help="one class (a slug, or an "
                                                          "alias naming one); default: this machine's"),
               fingerprint: Optional[str] = typer.Option(None, "--fingerprint", help="the stack's hash (`tuner "
                                                         "devices`); default: this machine's"),
               as_json: bool = JsonOpt) -> None:
    """What tuner.runtime would serve for each key, and why: level, source, row age, distance."""
    from tuner.misses import lookup_rows

    rows = lookup_rows(settings_mod.get(), kernel, shape, dtype, device_class, fingerprint)
    if as_json:
        return _print_json(rows)
    t = Table("key", "class", "config", "level", "source", "fingerprint", "age", "why")
    for r in rows:
        t.add_row(r["key"], r["device_class"], json.dumps(r["config"]), r["level"], r["source"],
                  r["fingerprint"] or "-", "-" if r["age_s"] is None else f"{r['age_s']:.0f} s",
                  r["reason"] or (f"distance {r['distance']:g} from {r['dims']}" if r["distance"] is not None else "-"))
    out.print(t)


misses_app = typer.Typer(help="What model processes were served from a fallback level (see `tuner retune --misses`).")
app.add_typer(misses_app, name="misses")


@misses_app.callback(invoke_without_command=True)
def misses(ctx: typer.Context, kernel: Optional[str] = typer.Option(None, "--kernel"),
           device_class: Optional[str] = typer.Option(None, "--device-class"), as_json: bool = JsonOpt) -> None:
    """Keys served from a fallback level and not tuned since, most frequent first."""
    if ctx.invoked_subcommand is not None:
        return
    from tuner.misses import list_misses

    rows = list_misses(settings_mod.get(), kernel, device_class)
    if as_json:
        return _print_json(rows)
    t = Table("kernel", "key", "class", "fingerprint", "level", "count", "first seen", "last seen")
    for r in rows:
        t.add_row(r["kernel"], ",".join(f"{k}={v}" for k, v in r["key"].items()) + f" {r['dtype']}",
                  r["device_class"], r["fingerprint"], r["level"], str(r["count"]), r["first_seen"], r["last_seen"])
    out.print(t)
    if not rows:
        err.print("no misses: every key looked up was served an exact configuration, or has been tuned since")


@misses_app.command("import")
def misses_import(file: str = typer.Argument(..., help="The JSON-lines file the runtime wrote (TUNER_MISS_FILE).")) -> None:
    """Load a bundle deployment's miss file into the database."""
    from tuner.misses import import_file

    records, rows = import_file(settings_mod.get(), file)
    err.print(f"imported {records} miss record(s) into {rows} row(s)")


@report_app.command("retune")
def report_retune(run: Optional[str] = typer.Argument(None, help="Retune run id (default: the latest)."),
                  plot: Optional[str] = typer.Option(None, "--plot", help="Write a PNG plot here."),
                  as_json: bool = JsonOpt) -> None:
    """Per key: old best on the old stack, old best on the new stack, new best, trials; regressions flagged."""
    from tuner.reports.retune import plot as draw
    from tuner.reports.retune import report

    result = report(settings_mod.get(), run)
    if plot:
        draw(result, plot)
    if as_json:
        return _print_json(result)
    t = _table("key", "class", "old best, old stack ms", "old best, new stack ms", "new best, new stack ms",
               "trials (orig)", "flags", title=f"retune run {result['run']}", caption=f"timings: {result['timing']}")
    for r in result["keys"]:
        t.add_row(_key(dims_word(r["key"], r["dtype"])), r["device_class"],
                  _ms(r["old_best_ms_old_stack"]), _ms(r["old_best_ms_new_stack"]), _ms(r["new_best_ms_new_stack"]),
                  f"{r['trials_spent']} ({r['original_trials']})", "; ".join(r["flags"]) or "-")
    _print(t)
    if plot:
        err.print(f"plot written to {plot}")


@report_app.command("suite")
def report_suite(results: str = typer.Argument(..., help="A results file of bench/gpu_suite.py (JSON)."),
                 plot: Optional[str] = typer.Option(None, "--plot", help="Write a PNG plot here."),
                 as_json: bool = JsonOpt) -> None:
    """Per shape: tuned vs the kernel's default vs triton.autotune vs torch.matmul, ms and TFLOP/s."""
    from tuner.reports import suite

    doc = suite.load(results)
    doc["summary"] = suite.summary(doc)
    if plot:
        suite.plot(doc, plot)
    if as_json:
        return _print_json(doc)
    out.print(suite.markdown(doc), markup=False, highlight=False)
    if plot:
        err.print(f"plot written to {plot}")


@report_app.command("compare")
def report_compare(device_class: list[str] = typer.Option(..., "--device-class", help="Give it twice: A, then B."),
                   kernel: Optional[str] = typer.Option(None, "--kernel"),
                   plot: Optional[str] = typer.Option(None, "--plot", help="Write a PNG plot here."),
                   as_json: bool = JsonOpt) -> None:
    """Two device classes on the keys tuned on both: times, TFLOP/s, ratio, cost per million launches."""
    from tuner.reports import compare

    result = compare.report(settings_mod.get(), device_class, kernel)
    if plot:
        compare.plot(result, plot)
    if as_json:
        return _print_json(result)
    priced = bool(result["prices"])
    t = _table("key", f"{result['a']} ms", "TFLOP/s", "GB/s", f"{result['b']} ms", "TFLOP/s", "GB/s", "A/B",
               *(["A $/1M", "B $/1M"] if priced else []),
               title=f"{result['a']} vs {result['b']}", caption=f"timings: {result['timing']}; A/B above 1: B is faster")
    for k in result["keys"]:
        t.add_row(_key(f"{k['kernel']}:{dims_word(k['key'], k['dtype'])}"),
                  *(v for side in ("a", "b") for v in (_ms(k[side]["ms"]), _num(k[side]["tflops"]), _num(k[side]["gbps"], ".0f"))),
                  f"{k['ratio']:.2f}",
                  *([_num(k["a"]["cost_per_million"], ".4f"), _num(k["b"]["cost_per_million"], ".4f")] if priced else []))
    _print(t)
    for kn, summary in result["per_kernel"].items():
        out.print(f"{kn}: geometric mean A/B {summary['geomean_ratio']:.3f} over {summary['keys']} key(s)", highlight=False)
    for side in ("a", "b"):
        for r in result[f"only_{side}"]:
            out.print(f"only on {r['device_class']}: {r['kernel']} {dims_word(r['key'], r['dtype'])}", highlight=False)
    if plot:
        err.print(f"plot written to {plot}")


def _num(v: float | None, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


@report_app.command("shapes")
def report_shapes(kernel: str = typer.Argument(...),
                  vary: str = typer.Option(..., "--vary", help="The varied dim: N, or N=3968:4224:32 for those points."),
                  shape: Optional[str] = typer.Option(None, "--shape", help="The fixed dims, e.g. M=4096,K=4096."),
                  device_class: str = typer.Option(..., "--device-class"),
                  dtype: str = typer.Option("float32", "--dtype"),
                  plot: Optional[str] = typer.Option(None, "--plot", help="Write a PNG plot here."),
                  as_json: bool = JsonOpt) -> None:
    """Tuned speed against one varied dimension: powers of two marked, points >10% below their neighbours named."""
    from tuner.reports import shapes

    result = shapes.report(settings_mod.get(), kernel, vary, shape, device_class, dtype)
    if plot:
        shapes.plot(result, plot)
    if as_json:
        return _print_json(result)
    unit = "TFLOP/s" if result["speed"] == "tflops" else "1/ms"
    t = _table(result["vary"], "ms", unit, "pow2", "dip", "config",
               title=f"{kernel} on {device_class}, {shape or ''} {dtype}".replace(",  ", ", "),
               caption=f"timings: {result['timing']}")
    for pt in result["points"]:
        t.add_row(str(pt["value"]), _ms(pt["ms"]), f"{pt[result['speed']]:.4g}", "yes" if pt["power_of_two"] else "",
                  f"-{pt['below_neighbours']:.0%}" if pt["dip"] else "", config_word(pt["config"]))
    _print(t)
    if result["dips"]:
        out.print(f"more than 10% below their neighbours: {', '.join(map(str, result['dips']))}", highlight=False)
    if result["missing"]:
        err.print(f"not tuned yet: {', '.join(map(str, result['missing']))}")
    if plot:
        err.print(f"plot written to {plot}")


@app.command("sweep-shapes")
def sweep_shapes(kernel: str = typer.Argument(...),
                 vary: str = typer.Option(..., "--vary", help="The varied dim and its values: N=3968:4224:32 "
                                          "(start:stop:step, stop included) or N=4000,4096."),
                 shape: Optional[str] = typer.Option(None, "--shape", help="The fixed dims, e.g. M=4096,K=4096."),
                 dtype: list[str] = DtypeOpt,
                 device_class: str = typer.Option(..., "--device-class", help="h100 | mi300x | cpu | a slug"),
                 trials: int = typer.Option(20, "--trials", help="Measured trials per point."),
                 sampler: str = SamplerOpt, seed: Optional[int] = typer.Option(None, "--seed"),
                 parallel: int = typer.Option(2, "--parallel"), as_json: bool = JsonOpt) -> None:
    """Queue one tuning job per value of one dim, the others fixed; then `tuner report shapes`."""
    from tuner.request import build_measurement
    from tuner.sweep import requests, submit_sweep

    reqs = requests(kernel, vary, shape, dtype, trials, sampler, seed, build_measurement())
    jobs = submit_sweep(settings_mod.get(), reqs, device_class, parallel)
    if as_json:
        return _print_json({"jobs": jobs})
    for req, job in zip(reqs, jobs):
        print(f"{job}  {req.keys[0].label()}")
    err.print(f"{len(jobs)} job(s) queued for {device_class}; `tuner report shapes {kernel} --vary {vary.split('=')[0]} "
              f"--device-class {device_class}{' --shape ' + shape if shape else ''}` shows them as they finish")


@app.command()
def serve(host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; beyond the loopback "
                                   "interface TUNER_API_TOKEN is required."),
          port: int = typer.Option(8000, "--port"), loglevel: str = typer.Option("info", "--loglevel")) -> None:
    """The HTTP API, dashboard and /metrics (FastAPI on uvicorn; docs at /docs)."""
    from tuner.api.app import serve as run

    run(settings_mod.get(), host, port, loglevel)


@app.command()
def history(kernel: str = typer.Argument(...), shape: list[str] = ShapeOpt, dtype: list[str] = DtypeOpt,
            device_class: Optional[str] = typer.Option(None, "--device-class"), as_json: bool = JsonOpt) -> None:
    """Every best configuration a key has had, newest first (superseded ones included)."""
    from tuner.queries import best_rows

    rows = best_rows(settings_mod.get(), kernel, shape, dtype, device_class, current_only=False)
    if as_json:
        return _print_json(rows)
    t = _table("key", "class / stack", "config", "ms", "tuned (UTC)")
    for r in rows:
        t.add_row(_key(r["key"]), _class_stack(r), config_word(r["config"]), _ms(r["median_ms"]),
                  f"{_when(r['created_at'])[5:]}\n-> {_when(r['superseded_at'])[5:] if r['superseded_at'] else 'current'}")
    _print(t)


@app.command()
def scheduler(loglevel: str = typer.Option("INFO", "--loglevel")) -> None:
    """Run Celery beat: the nightly retune at TUNER_RETUNE_CRON (default '0 3 * * *', UTC)."""
    from tuner.scheduler import run_scheduler

    run_scheduler(settings_mod.get(), loglevel)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Create or migrate the schema of TUNER_DB_URL to REVISION (default: head, with Optuna's tables)."""
    from db.session import DatabaseError, check_reachable, redact
    from tuner.database import sqlite_path, upgrade_schema

    s = settings_mod.get()
    path = sqlite_path(s.db_url)
    try:
        check_reachable(s.db_url, create_dir=path is not None and "TUNER_DB_URL" not in s.extra["explicit"])
        granted = upgrade_schema(s.db_url, revision)
    except DatabaseError as exc:
        raise UserError(str(exc)) from None
    err.print(f"database {redact(s.db_url)} is at {revision}" + (f"; granted to {', '.join(granted)}" if granted else ""))


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(ClickException, Abort) of every click that typer may raise from: typer 0.2x vendors its
    own as typer._click, older releases use click's; catching only one let a bad option value
    through as a traceback."""
    import importlib

    def named(attr: str, modules: tuple[str, ...]) -> tuple[type, ...]:
        found = []
        for name in modules:
            try:
                found.append(getattr(importlib.import_module(name), attr))
            except (ImportError, AttributeError):
                continue
        return tuple(found)

    return (named("ClickException", ("typer._click.exceptions", "click.exceptions")),
            named("Abort", ("typer.exceptions", "typer._click.exceptions", "click.exceptions")))


def _usage_error(exc) -> None:
    """A parse error (bad option value, missing argument, unknown command) as one line, exit 2;
    a bare `tuner` or `tuner db` prints its help instead."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()
        sys.exit(2)
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    err.print(f"error: {' '.join(exc.format_message().split())}{hint}", markup=False, highlight=False,
              soft_wrap=True)
    sys.exit(2)


def main() -> None:
    from db.session import DatabaseError
    from search_spaces.base import SpecError

    try:
        settings_mod.configure_plugins(settings_mod.get())
        code = app(standalone_mode=False)  # a command's `raise typer.Exit(n)` comes back as n
    except (UserError, SpecError, DatabaseError) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        usage, abort = _click_exceptions()
        if isinstance(exc, usage):
            _usage_error(exc)
        if isinstance(exc, abort):
            sys.exit(1)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
