"""Commands that tune: list what can be tuned, tune here or queue jobs for the fleet, follow and
cancel them, retune."""
from __future__ import annotations

from typing import Optional

import typer

from tuner import settings as settings_mod
from tuner.cli.common import (
    JsonOpt,
    app,
    err,
    key_cell,
    out,
    print_json,
    request_options,
    show,
    table,
    when,
)
from tuner.display import INTERPRETER_TIMING, config_word, dims_word, speedup
from tuner.display import ms as _ms
from tuner.errors import UserError


@app.command()
def kernels(as_json: bool = JsonOpt) -> None:
    """List the registered kernels."""
    from tuner.queries import kernel_rows

    rows = kernel_rows()
    if as_json:
        return print_json(rows)
    # the module is in --json: a table row stays readable at 80 columns
    t = table("kernel", "version", "key (example)", "dtypes", "valid there")
    for r in rows:
        t.add_row(r["name"], r["version"], "\n".join(f"{k}={v}" for k, v in r["example_shape"].items()),
                  "\n".join(r["dtypes"]), "\n".join(f"{n} {arch[:6]}" for arch, n in r["valid_configs"].items()))
    show(t)


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
        return print_json(rows)
    t = table("device", "class", "vendor", "arch", "fingerprint", "stack")
    for r in rows:
        fp = r["fingerprint"]
        t.add_row(r["device"], r["device_class"], r["vendor"], r["arch"], fp["hash"],
                  f"driver {fp['driver']}, {fp['runtime']}, triton {fp['triton']}, torch {fp['torch']}")
    show(t)


@app.command()
def models(as_json: bool = JsonOpt) -> None:
    """The model presets `--model` takes, and their layers."""
    from tuner import presets

    rows = [{"name": m.name, "source": m.source, "config": list(m.config), "dtype": m.dtype,
             "layers": [{"kind": la.kind, "name": la.name, **dict(la.dims),
                         **({"split": la.split} if la.kind == "dense" else {}),
                         "kernel": presets.layer_kernel(la.kind, m.dtype)} for la in m.layers]}
            for m in presets.all_models()]
    if as_json:
        return print_json(rows)
    t = table("model", "dtype", "MoE layers: E,N,K,topk", "dense layers", "source")
    for r in rows:
        dense = [la for la in r["layers"] if la["kind"] == "dense"]
        t.add_row(r["name"], r["dtype"],
                  " ".join(f"{la['E']},{la['N']},{la['K']},{la['topk']}" for la in r["layers"] if la["kind"] == "moe") or "-",
                  str(len(dense)) + ("" if not dense or dense[0]["kernel"] else " (not keyed in this dtype)"), r["source"])
    show(t)
    for r in rows:  # where each preset's numbers come from, to check against the model's own file
        if r["config"]:
            out.print(f"{r['name']}: {r['source']} config.json {'; '.join(r['config'])}", highlight=False)


@app.command()
@request_options("tune")
def tune(request: dict,
         device: Optional[str] = typer.Option(None, "--device", help="cpu (Triton interpreter) | cuda | cuda:N"),
         from_misses: bool = typer.Option(False, "--from-misses", help="Tune the keys model processes on this "
                                          "device class missed (a drop-in kernel's inputs rebuilt from its "
                                          "recorded launches); not with --shape or --model."),
         as_json: bool = JsonOpt) -> None:
    """Tune KERNEL (or every layer of --model) here, in-process (no broker); re-running continues the same studies."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tuner.request_fields import requests_from
    from tuner.tune import prepare, tune_local

    kernel, trials, model = request["kernel"], request["trials"], request["model"]
    if from_misses:
        from tuner.miss_intake import request_from_misses

        if request["shapes"] or model is not None:
            raise UserError("--from-misses takes its keys from the recorded misses: drop --shape and --model")
        reqs = [request_from_misses(settings_mod.get(), kernel, trials, request["sampler"], request["seed"], device)]
    else:
        from tuner.miss_intake import signed_request

        reqs = [signed_request(settings_mod.get(), req) for req in requests_from(request)]
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
        return print_json(docs[0] if model is None else docs)
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
    t = table("key", "trials", "best config", "best", "default", "speedup",
               title=f"job {result.job_id[:12]}: {doc['kernel']} on {result.device_class} (stack {result.fingerprint})",
               caption=f"timings: {timing}{'; ' + how if how else ''}; search {search_s:.1f} s{rate}, final "
                       f"re-measurement {sum(r['finalize_s'] for r in rows):.1f} s, harness start {result.startup_s:.1f} s")
    for r in rows:
        t.add_row(key_cell(r["key"]), str(r["trials"]), config_word(r["config"]) if r["config"] else "none ok",
                  _ms(r["median_ms"]), _ms(r["default_ms"]), speedup(r["speedup"]))
    show(t)


@app.command()
@request_options("submit")
def submit(request: dict,
           wait_: bool = typer.Option(False, "--wait", help="Wait until the job ends and print its status."),
           timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds to --wait at most."),
           as_json: bool = JsonOpt) -> None:
    """Queue a tuning job (one per kernel of --model) for a device class; prints the job ids. Needs the broker and database only."""
    from tuner.coordinator import submit_all

    job_ids = submit_all(settings_mod.get(), request)
    if not wait_:
        if as_json:
            return print_json({"job": job_ids[0]} if len(job_ids) == 1 else {"jobs": job_ids})
        return print("\n".join(job_ids))
    from db import lifecycle
    from tuner.coordinator import wait
    states = []
    for job_id in job_ids:
        err.print(f"job {job_id} queued; waiting")
        st = wait(settings_mod.get(), job_id, timeout)
        _show_status(st, as_json)
        states.append(st["state"])
    if any(state != lifecycle.DONE for state in states):
        raise typer.Exit(1)


@app.command()
def jobs(limit: int = typer.Option(50, "--limit"),
         state: Optional[str] = typer.Option(None, "--state", help="queued, running, done, failed or cancelled."),
         kernel: Optional[str] = typer.Option(None, "--kernel"),
         device_class: Optional[str] = typer.Option(None, "--device-class", help="As the job named it, or the class "
                                                    "it ran on."),
         as_json: bool = JsonOpt) -> None:
    """Recent jobs, newest first (of a state, kernel and device class when given)."""
    from tuner.coordinator import jobs as list_jobs

    rows = list_jobs(settings_mod.get(), limit, state, kernel, device_class)
    if as_json:
        return print_json(rows)
    t = table("job", "kind", "kernel", "class", "state", "trials", "keys", "created (UTC)")
    for r in rows:
        t.add_row(r["job"][:12], r["kind"], r["kernel"], r["device_class"] or "local", r["state"], str(r["trials"]),
                  str(r["keys"]), when(r["created_at"]))
    show(t)


@app.command()
def status(job: str = typer.Argument(..., help="Job id (or a unique prefix of 6+ chars)."), as_json: bool = JsonOpt) -> None:
    """Per key: trials done, best so far, workers on it."""
    from tuner.coordinator import status as job_status

    _show_status(job_status(settings_mod.get(), job), as_json)


def _show_status(st: dict, as_json: bool) -> None:
    if as_json:
        return print_json(st)
    from harness.protocol import Measurement

    how = Measurement.from_json(st.get("measurement")).describe()
    t = table("key", "state", "trials", "best", "default", "best config", "workers",
               title=f"job {st['job'][:12]} {st['kernel']} on {st['device_class'] or 'this machine'}: {st['state']}",
               caption=f"timed with {how}" if how else None)
    kept = []
    for k in st["keys"]:
        # the table's cell: what the budget counts, and the failures; --json has every outcome
        trials = f"{k['trials_done']}/{k['budget']}" + (f" {k['failed_trials']} failed" if k["failed_trials"] else "")
        r = k["result"]
        if r:  # what the final re-measurement stored, not the search's best so far
            best = (_ms(r["median_ms"]), _ms(r["default_ms"]), config_word(r["config"]))
            if not r["changed"]:
                kept.append(dims_word(k["key"], k["dtype"]))
        else:
            best = (_ms(k["best_ms_so_far"]) + (" so far" if k["best_ms_so_far"] else ""),
                    _ms(k.get("default_ms_so_far")), config_word(k["best_config_so_far"]))
        t.add_row(key_cell(dims_word(k["key"], k["dtype"])), k["state"], trials, *best, ", ".join(k["workers"]) or "-")
    out.print(t)
    for key in kept:  # a finished key's best is what its final re-measurement stored
        err.print(f"note: {key} kept its current best: nothing measured beat it beyond noise")
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
    t = _queued_table(result, as_json, dry_run, "retune", "retune run",
                      "job", "kernel", "device class", "keys", "budgets", "old -> new stack")
    if t is None:
        return
    for j in result["jobs"]:
        t.add_row(j.get("job", "-")[:12], j["kernel"], j["device_class"], str(len(j["keys"])),
                  ", ".join(map(str, j["budgets"])),
                  f"{', '.join(j['old_fingerprint'])}\n-> {', '.join(j['new_fingerprint'])}")
    show(t)
    _print_skipped(result)
    if not result["jobs"] and not result["skipped"]:
        err.print("nothing stale: every current configuration was tuned under a stack that live workers run")


def _print_skipped(result: dict) -> None:
    """A retune's keys left out, one line each with the reason."""
    for sk in result["skipped"]:
        dims = ",".join(f"{k}={v}" for k, v in sk["key"].items())
        err.print(f"skipped {sk['kernel']} {dims} {sk['dtype']} on {sk['device_class']}: {sk['reason']}",
                  markup=False, highlight=False, soft_wrap=True)


def _queued_table(result: dict, as_json: bool, dry_run: bool, lease: str, title: str, *columns: str):
    """A retune's jobs: printed as JSON (None returned), or the table to fill, after saying when
    another run held the lease."""
    if as_json:
        print_json(result)
        return None
    if result.get("locked_by_other"):
        err.print(f"another {lease} holds the lease; nothing queued")
    return table(*columns, title=f"{title} {result['run']}" + (" (dry run)" if dry_run else ""))


def _retune_misses(device_class, kernel, top, min_count, dry_run: bool, as_json: bool) -> None:
    from tuner.miss_intake import retune_misses

    result = retune_misses(settings_mod.get(), device_class, kernel, top, min_count, dry_run)
    t = _queued_table(result, as_json, dry_run, "retune of misses", "retune of misses",
                      "job", "kernel", "device class", "key", "misses", "levels")
    if t is None:
        return
    for j in result["jobs"]:
        t.add_row(j.get("job", "-"), j["kernel"], j["device_class"],
                  ",".join(f"{k}={v}" for k, v in j["key"].items()) + f" {j['dtype']}", str(j["count"]),
                  ",".join(j["levels"]))
    show(t)
    _print_skipped(result)
