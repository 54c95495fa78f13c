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
SamplerOpt = typer.Option(strategies.DEFAULT, "--sampler", help=f"The search strategy: {', '.join(strategies.BUILTIN)}, "
                          "or one registered with TUNER_STRATEGY_MODULES.")


def _print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


@app.command()
def kernels(as_json: bool = JsonOpt) -> None:
    """List the registered kernels."""
    from search_spaces import registry
    from search_spaces.base import target_for

    rows = []
    for name in registry.names():
        spec = registry.get(name)
        sizes = {arch: len(spec.valid_configs(spec.make_key({k: 1024 for k in spec.key_names}, "float16"),
                                              target_for(arch)))
                 for arch in ("sm_90", "gfx942", "interpreter")}
        rows.append({"name": name, "version": spec.version, "key": list(spec.key_names),
                     "dtypes": list(spec.dtypes), "valid_configs_at_1024": sizes,
                     "module": type(spec).__module__})
    if as_json:
        return _print_json(rows)
    t = Table("kernel", "version", "key", "dtypes", "valid configs at 1024 (sm_90/gfx942/interp)", "module")
    for r in rows:
        s = r["valid_configs_at_1024"]
        t.add_row(r["name"], r["version"], ",".join(r["key"]), ",".join(r["dtypes"]),
                  f"{s['sm_90']}/{s['gfx942']}/{s['interpreter']}", r["module"])
    out.print(t)


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
    t = Table("device", "class", "vendor", "arch", "fingerprint", "stack")
    for r in rows:
        fp = r["fingerprint"]
        t.add_row(r["device"], r["device_class"], r["vendor"], r["arch"], fp["hash"],
                  f"driver {fp['driver']}, {fp['runtime']}, triton {fp['triton']}, torch {fp['torch']}")
    out.print(t)


@app.command()
def tune(kernel: str = typer.Argument(..., help="A registered kernel (see `tuner kernels`)."),
         shape: list[str] = ShapeOpt, dtype: list[str] = DtypeOpt,
         trials: int = typer.Option(20, "--trials", help="Measured trials per key."),
         sampler: str = SamplerOpt, seed: Optional[int] = typer.Option(None, "--seed"),
         device: Optional[str] = typer.Option(None, "--device", help="cpu (Triton interpreter) | cuda | cuda:N"),
         rotate_buffers: int = RotateOpt, cuda_graph: bool = GraphOpt, max_cv: Optional[float] = MaxCvOpt,
         as_json: bool = JsonOpt) -> None:
    """Tune KERNEL here, in-process (no broker); re-running continues the same studies."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tuner.request import build_measurement, build_request
    from tuner.tune import prepare, tune_local

    req = build_request(kernel, shape, dtype, trials, sampler, seed,
                        build_measurement(rotate_buffers, cuda_graph, max_cv))
    if device is not None and device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"unknown --device {device[:40]!r}; use cpu, cuda or cuda:N")
    plan = prepare(req, settings_mod.get(), device)
    with Progress(TextColumn("[bold]tuning {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, disable=as_json) as bar:
        task = bar.add_task(f"{kernel} ({len(req.keys)} key(s))", total=trials * len(req.keys))
        result = tune_local(plan, progress=lambda n: bar.advance(task, n))
    rows = [{"key": o.key.label(), "dims": o.key.dim_map, "dtype": o.key.dtype, "trials": o.trials,
             "config": o.config, "median_ms": o.median_ms, "default_ms": o.default_ms,
             "speedup": o.speedup, "search_s": round(o.search_s, 3), "finalize_s": round(o.finalize_s, 3),
             "kept_current_best": o.kept}
            for o in result.keys]
    timing = "triton-interpreter (CPU; not GPU figures)" if result.interpreter else "gpu"
    m = req.measurement
    how = m.describe()
    if as_json:
        return _print_json({"job": result.job_id, "device_class": result.device_class,
                            "fingerprint": result.fingerprint, "timing": timing, "measurement": m.to_json(),
                            "startup_s": round(result.startup_s, 3), "keys": rows})
    t = Table("key", "trials", "best config", "best ms", "default ms", "speedup", "search",
              title=f"job {result.job_id} on {result.device_class} (fingerprint {result.fingerprint})",
              caption=f"timings: {timing}{'; ' + how if how else ''}; harness start {result.startup_s:.1f} s")
    for r in rows:
        rate = f" ({r['trials'] / r['search_s'] * 60:.0f}/min)" if r["search_s"] > 0 and r["trials"] else ""
        t.add_row(r["key"], str(r["trials"]), json.dumps(r["config"]) if r["config"] else "none ok",
                  _ms(r["median_ms"]), _ms(r["default_ms"]), f"{r['speedup']:.2f}x" if r["speedup"] else "-",
                  f"{r['search_s']:.1f} s{rate}")
    out.print(t)


def _ms(v: float | None) -> str:
    return f"{v:.3f}" if v is not None else "-"


@app.command()
def best(kernel: str = typer.Argument(...), shape: list[str] = ShapeOpt, dtype: list[str] = DtypeOpt,
         device_class: Optional[str] = typer.Option(None, "--device-class", help="alias or slug; default: this machine's"),
         as_json: bool = JsonOpt) -> None:
    """The stored best configuration per key (current rows only)."""
    from tuner.queries import best_rows

    rows = best_rows(settings_mod.get(), kernel, shape, dtype, device_class)
    if as_json:
        return _print_json(rows)
    t = Table("key", "device class", "fingerprint", "config", "ms", "speedup", "trials", "tuned at")
    for r in rows:
        t.add_row(r["key"], r["device_class"], r["fingerprint"], json.dumps(r["config"]) if r["config"] else "none stored",
                  _ms(r["median_ms"]), f"{r['speedup']:.2f}x" if r.get("speedup") else "-",
                  str(r.get("trials") or "-"), str(r.get("created_at") or "-"))
    out.print(t)


@app.command()
def export(fmt: str = typer.Option("bundle", "--format", help=f"One of: {', '.join(formats.FORMATS)}."),
           output: str = typer.Option(..., "--output", "-o", help="File (or directory) to write."),
           kernel: Optional[str] = typer.Option(None, "--kernel"),
           device_class: Optional[str] = typer.Option(None, "--device-class")) -> None:
    """Export the current best configurations for deployments without database access."""
    n = formats.export(settings_mod.get(), fmt, output, kernel, device_class)
    err.print(f"wrote {n} configuration(s) to {output}")


@app.command()
def submit(kernel: str = typer.Argument(...), shape: list[str] = ShapeOpt, dtype: list[str] = DtypeOpt,
           device_class: str = typer.Option(..., "--device-class", help="h100 | mi300x | cpu | a slug"),
           trials: int = typer.Option(20, "--trials", help="Measured trials per key, across all workers."),
           sampler: str = SamplerOpt, seed: Optional[int] = typer.Option(None, "--seed"),
           parallel: int = typer.Option(2, "--parallel", help="Batches in flight per key (workers that cooperate)."),
           rotate_buffers: int = RotateOpt, cuda_graph: bool = GraphOpt, max_cv: Optional[float] = MaxCvOpt,
           wait_: bool = typer.Option(False, "--wait", help="Wait until the job ends and print its status."),
           timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds to --wait at most."),
           as_json: bool = JsonOpt) -> None:
    """Queue a tuning job for a device class; prints the job id. Needs the broker and database only."""
    from tuner.coordinator import submit as do_submit
    from tuner.request import build_measurement, build_request

    req = build_request(kernel, shape, dtype, trials, sampler, seed,
                        build_measurement(rotate_buffers, cuda_graph, max_cv))
    job_id = do_submit(settings_mod.get(), req, device_class, parallel)
    if not wait_:
        return _print_json({"job": job_id}) if as_json else print(job_id)
    from tuner.coordinator import wait
    err.print(f"job {job_id} queued; waiting")
    st = wait(settings_mod.get(), job_id, timeout)
    _show_status(st, as_json)
    if st["state"] not in ("done",):
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
    t = Table("job", "kind", "kernel", "class", "state", "trials", "keys", "created")
    for r in rows:
        t.add_row(r["job"], r["kind"], r["kernel"], r["device_class"], r["state"], str(r["trials"]),
                  str(r["keys"]), r["created_at"])
    out.print(t)


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
    t = Table("key", "state", "trials", "failed", "best ms so far", "best config so far", "workers",
              title=f"job {st['job']} {st['kernel']} on {st['device_class']}: {st['state']}",
              caption=f"timed with {how}" if how else None)
    for k in st["keys"]:
        t.add_row(",".join(f"{a}={b}" for a, b in k["key"].items()) + f" {k['dtype']}", k["state"],
                  f"{k['trials_done']}/{k['budget']}", str(k["failed_trials"]), _ms(k["best_ms_so_far"]),
                  json.dumps(k["best_config_so_far"]) if k["best_config_so_far"] else "-", ",".join(k["workers"]))
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
           as_json: bool = JsonOpt) -> None:
    """Queue warm-started retune jobs for configurations tuned under another stack than live workers run."""
    from tuner.coordinator import retune as do_retune

    result = do_retune(settings_mod.get(), device_class, kernel, stale_only, dry_run)
    if as_json:
        return _print_json(result)
    if result.get("locked_by_other"):
        err.print("another retune holds the lease; nothing queued")
    t = Table("job", "kernel", "device class", "keys", "budgets", "old -> new fingerprint",
              title=f"retune run {result['run']}" + (" (dry run)" if dry_run else ""))
    for j in result["jobs"]:
        t.add_row(j.get("job", "-"), j["kernel"], j["device_class"], str(len(j["keys"])), ",".join(map(str, j["budgets"])),
                  f"{','.join(j['old_fingerprint'])} -> {','.join(j['new_fingerprint'])}")
    out.print(t)
    if not result["jobs"]:
        err.print("nothing stale: every current configuration was tuned under a stack that live workers run")


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
    t = Table("key", "class", "old best / old stack ms", "old best / new stack ms", "new best / new stack ms",
              "trials (orig)", "flags", title=f"retune run {result['run']}", caption=f"timings: {result['timing']}")
    for r in result["keys"]:
        t.add_row(",".join(f"{k}={v}" for k, v in r["key"].items()) + f" {r['dtype']}", r["device_class"],
                  _ms(r["old_best_ms_old_stack"]), _ms(r["old_best_ms_new_stack"]), _ms(r["new_best_ms_new_stack"]),
                  f"{r['trials_spent']} ({r['original_trials']})", "; ".join(r["flags"]) or "-")
    out.print(t)
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


@app.command()
def history(kernel: str = typer.Argument(...), shape: list[str] = ShapeOpt, dtype: list[str] = DtypeOpt,
            device_class: Optional[str] = typer.Option(None, "--device-class"), as_json: bool = JsonOpt) -> None:
    """Every best configuration a key has had, newest first (superseded ones included)."""
    from tuner.queries import best_rows

    rows = best_rows(settings_mod.get(), kernel, shape, dtype, device_class, current_only=False)
    if as_json:
        return _print_json(rows)
    t = Table("key", "class", "fingerprint", "config", "ms", "tuned at", "superseded at")
    for r in rows:
        t.add_row(r["key"], r["device_class"], r["fingerprint"], json.dumps(r["config"]), _ms(r["median_ms"]),
                  r["created_at"], r["superseded_at"] or "current")
    out.print(t)


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
