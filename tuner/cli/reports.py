"""`tuner report ...` and `tuner sweep-shapes`: reports over stored results, as tables, JSON or plots."""
from __future__ import annotations

from typing import Optional

import typer

from tuner import settings as settings_mod
from tuner.cli.common import DtypeOpt, JsonOpt, SamplerOpt, app, err, key_cell, out, print_json, report_app, show, table
from tuner.display import config_word, dims_word
from tuner.display import ms as _ms


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
        return print_json(result)
    t = table("key", "class", "old best, old stack", "old best, new stack", "new best, new stack",
               "trials (orig)", "flags", title=f"retune run {result['run']}", caption=f"timings: {result['timing']}")
    for r in result["keys"]:
        t.add_row(key_cell(dims_word(r["key"], r["dtype"])), r["device_class"],
                  _ms(r["old_best_ms_old_stack"]), _ms(r["old_best_ms_new_stack"]), _ms(r["new_best_ms_new_stack"]),
                  f"{r['trials_spent']} ({r['original_trials']})", "; ".join(r["flags"]) or "-")
    show(t)
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
        return print_json(doc)
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
        return print_json(result)
    priced = bool(result["prices"])
    t = table("key", f"{result['a']}", "TFLOP/s", "GB/s", f"{result['b']}", "TFLOP/s", "GB/s", "A/B",
               *(["A $/1M", "B $/1M"] if priced else []),
               title=f"{result['a']} vs {result['b']}", caption=f"timings: {result['timing']}; A/B above 1: B is faster")
    for k in result["keys"]:
        t.add_row(key_cell(f"{k['kernel']}:{dims_word(k['key'], k['dtype'])}"),
                  *(v for side in ("a", "b") for v in (_ms(k[side]["ms"]), _num(k[side]["tflops"]), _num(k[side]["gbps"], ".0f"))),
                  f"{k['ratio']:.2f}",
                  *([_num(k["a"]["cost_per_million"], ".4f"), _num(k["b"]["cost_per_million"], ".4f")] if priced else []))
    show(t)
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
        return print_json(result)
    unit = "TFLOP/s" if result["speed"] == "tflops" else "1/ms"
    t = table(result["vary"], "time", unit, "pow2", "dip", "config",
               title=f"{kernel} on {device_class}, {shape or ''} {dtype}".replace(",  ", ", "),
               caption=f"timings: {result['timing']}")
    for pt in result["points"]:
        t.add_row(str(pt["value"]), _ms(pt["ms"]), f"{pt[result['speed']]:.4g}", "yes" if pt["power_of_two"] else "",
                  f"-{pt['below_neighbours']:.0%}" if pt["dip"] else "", config_word(pt["config"]))
    show(t)
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
        return print_json({"jobs": jobs})
    for req, job in zip(reqs, jobs):
        print(f"{job}  {req.keys[0].label()}")
    err.print(f"{len(jobs)} job(s) queued for {device_class}; `tuner report shapes {kernel} --vary {vary.split('=')[0]} "
              f"--device-class {device_class}{' --shape ' + shape if shape else ''}` shows them as they finish")
