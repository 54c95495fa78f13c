"""Mutation testing of the modules that carry the README's guarantees, with mutmut (slow: not in CI).

Each module's mutants run against the tests that guard it (MODULES), within a time budget per
module, in a scratch copy of the repository: mutmut writes its mutants under ./mutants and reads
[tool.mutmut] from ./pyproject.toml, so the copy gets its own and the checkout stays clean.
mutmut runs, for each mutant, only the guarding tests that call the mutated function in the test
process (it traces them once first); a function reached only from a worker or CLI subprocess has
"no tests" here, which is reported as not caught, never as killed.

Results go to bench/results/mutation.json, {"modules": {PATH: {"killed", "total", "survivors":
[{"where": "FILE:LINE", "mutation", "why"}]}}} (a module that was not run keeps its last
record), and a summary to bench/results/mutation.md. A mutant whose forked child crashed (mutmut's
"segfault") or timed out is run again in a fresh process and judged there. A survivor's "why" comes from EXPLAINED
(an equivalent mutant, and why it changes no behaviour), else "not yet caught".

    python bench/mutation.py --modules search/finalize.py,workers/miss_jobs.py --budget-s 600
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MUTMUT = Path(sys.executable).parent / "mutmut"


@dataclass(frozen=True)
class Module:
    tests: tuple[str, ...]  # pytest arguments selecting the guarding tests
    functions: tuple[str, ...] = ()  # only these functions' mutants count (all when empty)
    # mutmut's wall limit per mutant is (the tests' clean time + 1 s) x this / 2 x 2 (its default 15):
    # a module whose mutants make the runtime wait out deadlines spends most of its budget there
    timeout_multiplier: float = 15.0


MODULES = {
    "search/finalize.py": Module(("tests/test_finalize.py",)),
    "workers/miss_jobs.py": Module(("tests/test_miss_jobs.py", "tests/test_dropin_retune.py",
                                    "tests/test_misses.py::test_retune_of_misses_queues_the_most_frequent_keys_first",
                                    "tests/test_misses.py::test_misses_become_jobs_only_where_a_worker_can_tune_them")),
    "db/store.py": Module(("tests/test_claims.py",), ("claim_config", "record_claimed_trial", "release_claims")),
    "search/studies.py": Module((
        "tests/test_studies.py",
        "tests/test_claims.py::test_a_dead_worker_s_trial_is_failed_and_its_configuration_proposed_again")),
    # test_service.py runs workers in processes of their own: only these tests call the service here
    "workers/service.py": Module(("tests/test_trust.py", "tests/test_worker_service.py", "tests/test_worker_rows.py")),
    # in-process tests only (with the whole of test_runtime.py mutmut's first, clean run failed in
    # the copy), and not the tutorial kernels' interpreted launches (minutes under mutation)
    "tuner/runtime/decorator.py": Module((
        "tests/test_decorator.py",
        "tests/test_runtime.py::test_a_tuned_launch_by_position_or_by_keyword_gets_one_entry",
        "tests/test_runtime.py::test_clear_cache_serves_the_new_source",
        "tests/test_misses.py::test_misses_are_counted_on_every_path")),
    # the in-process tests of the runtime (those that start a Python of their own cannot see a mutant;
    # the 200 interpreted launches of the tiles test take minutes under mutation)
    "tuner/runtime/cache.py": Module(("tests/test_runtime_cache.py", "tests/test_runtime_state.py",
                                      "tests/test_runtime_answers.py", *(f"tests/test_runtime.py::test_{t}" for t in (
        "fallback_order_with_a_bundle", "warm_lookup_is_a_cache_hit", "a_bound_lookup_is_lookup_without_keywords",
        "unreadable_sources_serve_defaults_with_one_warning", "clear_cache_serves_the_new_source",
        "a_returned_configuration_is_read_only", "the_cache_is_bounded_and_keeps_what_is_used",
        "fallback_rows_are_served_only_if_the_kernel_accepts_them",
        "a_failed_device_probe_serves_defaults_never_stored_rows",
        "explain_says_which_level_answered_from_where_and_how_old", "a_late_answer_replaces_the_default_served_meanwhile",
        "defaults_served_while_the_source_was_unreachable_are_asked_again")),
        *(f"tests/test_runtime_safety.py::test_{t}" for t in (
            "a_miss_never_waits_on_a_source_that_hangs", "a_warm_hit_while_another_thread_is_stuck_in_a_miss",
            "a_database_that_accepts_and_never_answers", "what_the_model_did_not_get_wrong_never_raises",
            "a_programming_error_is_one_clear_lookup_error")),
        "tests/test_misses.py::test_misses_are_counted_on_every_path",
        "tests/test_misses.py::test_a_sink_that_is_down_drops_the_batch_with_one_warning"),
        timeout_multiplier=4.0),
    "tuner/formats/bundle.py": Module(("tests/test_bundle_format.py",
                                       "tests/test_runtime.py::test_fallback_order_with_a_bundle",
                                       "tests/test_runtime.py::test_explain_says_which_level_answered_from_where_and_how_old")),
    "tuner/formats/vllm.py": Module(("tests/test_vllm_formats.py", "tests/test_vllm_format_module.py")),
    "tuner/formats/sglang.py": Module(("tests/test_vllm_formats.py", "tests/test_vllm_format_module.py")),
    # the LoRA files' own tests (tests/test_llm_kernels.py never reaches the format; the end-to-end
    # export tests of test_llm_kernels_e2e.py tune in a CLI process first, about a minute a mutant)
    "tuner/formats/vllm_lora.py": Module((
        "tests/test_vllm_lora_files.py",
        "tests/test_llm_kernels_e2e.py::test_files_are_named_by_the_torch_device_name_and_nested_as_vllm_reads_them",
        "tests/test_llm_kernels_e2e.py::test_gpu_names_are_torchs_with_vllms_replacements",
        "tests/test_kernel_contract.py::test_a_kernel_declaring_an_export_is_written_by_it",
        "tests/test_kernel_contract.py::test_a_kernel_declaring_an_export_without_what_it_needs_is_refused")),
}

# the explained equivalent mutants, and the SQL-case rule: data kept beside the recorded sweeps
# (bench/data/mutation_explained.py), not a script of its own (bench scripts never import each other)
sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from mutation_explained import EXPLAINED, SQL_TEXT, sql_case  # noqa: E402

KILLED = {"killed", "timeout"}  # a mutant that makes a guarding test fail, or hang past mutmut's limit


def scratch_copy(work: Path, module: str, spec: Module) -> None:
    """The tracked files (the working tree's versions) and a pyproject.toml that configures mutmut."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / name)
    packages = sorted({Path(n).parts[0] for n in files.decode().split("\0") if n.endswith(".py") and "/" in n})
    config = {"source_paths": [module], "also_copy": packages,
              "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", "no:xdist", "-x", "-q"],
              "pytest_add_cli_args_test_selection": list(spec.tests), "timeout_multiplier": spec.timeout_multiplier}
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in config.items()]
    with open(work / "pyproject.toml", "a") as f:
        f.write("\n".join(lines) + "\n")


def function_of(mutant: str) -> str:
    """`search.finalize.x_faster__mutmut_3` -> faster; `...xǁClassǁmethod__mutmut_1` -> Class.method."""
    tail = mutant.rsplit(".", 1)[1]
    tail = re.sub(r"__mutmut_\d+$", "", tail)
    return ".".join(p for p in tail.split("ǁ")[1:]) if tail.startswith("xǁ") else tail[2:]


def def_lines(path: Path) -> dict[str, int]:
    """Function (and Class.method) -> the line of its `def`."""
    out: dict[str, int] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = node.lineno
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out[f"{node.name}.{item.name}"] = item.lineno
    return out


def mutant_sources(mutated: Path) -> dict[str, list[str]]:
    """Each function of mutmut's mutated module (its mutants and the `__mutmut_orig` copy) -> its lines."""
    text = mutated.read_text()
    out: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name:
            lines = (ast.get_source_segment(text, node) or "").splitlines()
            if lines:  # the def line without the function's own name, so a mutated default shows
                lines[0] = lines[0].replace(node.name, "f", 1)
            out[node.name] = lines
    return out


def describe(sources: dict[str, list[str]], mutant: str, module: str, start: int) -> tuple[str, str]:
    """(FILE:LINE, "before -> after") of a mutant: its function against mutmut's copy of
    the original, line by line (mutmut keeps the formatting, so line i of the function is start + i)."""
    name = mutant.rsplit(".", 1)[1]
    mutated, orig = sources.get(name, []), sources.get(re.sub(r"__mutmut_\d+$", "__mutmut_orig", name), [])
    changed = [i for i in range(max(len(orig), len(mutated)))
               if (orig[i] if i < len(orig) else None) != (mutated[i] if i < len(mutated) else None)]
    if not changed:
        return f"{module}:{start}", "(no textual change found)"
    first, last = changed[0], changed[-1] + 1
    before = " ".join(line.strip() for line in orig[first:last])
    after = " ".join(line.strip() for line in mutated[first:last])
    return f"{module}:{start + first}", f"{before} -> {after}"


# mutmut's "segfault" (its forked child died of SIGSEGV or SIGKILL) and "timeout" (SIGXCPU at its limit)
ALONE = (-11, -9, -24, 24, 152, 255, 36)
RERUN_S = 20  # a mutant's run of its own may take this plus 3x its tests' clean time, else it is a timeout
UNJUDGED = 35  # mutmut's "suspicious": a crashed or hung mutant whose tests fail alone without it too


def rerun_alone(work: Path, env: dict, codes: dict, parallel: int) -> dict:
    """Each mutant whose forked child crashed or timed out, run again in a Python of its own
    (MUTANT_UNDER_TEST, on the tests mutmut traced to its function), `parallel` at once: mutmut forks
    its children from a process that has imported torch, and such a child can crash or hang on a
    lock a thread held at the fork (cache.py: a mutant that timed out there passed its 32 tests
    alone in 8 s), so neither is counted as caught until a clean run says so. Returns mutant ->
    mutmut's exit code: pytest's (0 survived, 1 killed), 36 (timeout, a hang alone too) or 35
    ("suspicious", not caught: its tests do not pass alone even without it, so nothing can judge it)."""
    from concurrent.futures import ThreadPoolExecutor

    judged = [m for m, c in codes.items() if c in ALONE]
    if not judged:
        return {}
    stats = json.loads((work / "mutants" / "mutmut-stats.json").read_text())
    traced, durations = stats["tests_by_mangled_function_name"], stats["duration_by_test"]

    def alone(mutant: str, tests: tuple[str, ...]) -> int:
        cmd = [sys.executable, "-m", "pytest", "--rootdir=.", "-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
               "-p", "no:xdist", *tests]
        try:
            done = subprocess.run(cmd, cwd=work / "mutants", env={**env, "MUTANT_UNDER_TEST": mutant},
                                  capture_output=True, timeout=RERUN_S + 3 * sum(durations.get(x, 0) for x in tests))
            return 0 if done.returncode == 0 else 1
        except subprocess.TimeoutExpired:
            return 36

    tests_of = {m: tuple(sorted(traced.get(m.partition("__mutmut_")[0], []))) for m in judged}
    with ThreadPoolExecutor(parallel) as pool:
        # the same tests without a mutant ("") first: a judgement needs them to pass alone
        sets = sorted({t for t in tests_of.values() if t})
        clean = dict(zip(sets, (code == 0 for code in pool.map(lambda t: alone("", t), sets))))
        runnable = [m for m in judged if clean.get(tests_of[m])]
        out = dict(zip(runnable, pool.map(lambda m: alone(m, tests_of[m]), runnable)))
    out.update({m: UNJUDGED for m in judged if m not in out})  # never mutmut's verdict of the fork
    for m in judged:
        print(f"  {status_of(codes[m])} under mutmut, alone: {m.rsplit('.', 1)[1]} -> {status_of(out[m])}", flush=True)
    return out


def status_of(code: int) -> str:
    from mutmut.stats import status_by_exit_code
    return status_by_exit_code[code]


def run_module(module: str, spec: Module, budget_s: float, children: int,
               resume: Path | None = None) -> tuple[dict, dict]:
    """The module's record in the issue's schema (killed, total, survivors), and how it was run.
    resume: the scratch copy of an earlier run of this module stopped before its end (mutmut keeps
    each mutant's result there and runs only those without one); kept afterwards."""
    kept = contextlib.nullcontext(str(resume)) if resume else None
    with kept or tempfile.TemporaryDirectory(prefix="tuner-mutation-") as tmp:
        work = Path(tmp)
        if resume is None or not (work / "mutants").is_dir():
            scratch_copy(work, module, spec)
        # the test services' own settings (e.g. TUNER_TEST_REDIS_PORT) pass; the runtime's do not
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_") or k.startswith("TUNER_TEST_")}
        env["TUNER_HOME"] = str(work / ".tuner")
        t0 = time.monotonic()
        # its own process group: at the budget, mutmut's forked mutant runs end with it (an orphaned
        # one would hold the output pipes open, and this script would wait for it)
        proc = subprocess.Popen([str(MUTMUT), "run", "--max-children", str(children)], cwd=work, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=budget_s)
            complete, tail = proc.returncode == 0, out[-400:] + err[-400:]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            complete, tail = False, f"stopped after the budget of {budget_s:.0f} s"
        elapsed = time.monotonic() - t0
        meta = work / "mutants" / (module + ".meta")
        if not meta.exists():
            raise SystemExit(f"mutmut produced no results for {module}: {tail}")
        sys.path.insert(0, str(work))
        from mutmut.stats import status_by_exit_code

        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not complete and all(c is None for c in codes.values()):
            # mutmut's clean run failed (e.g. a guarding test file not yet tracked by git, so not
            # in the copy): not a result to record as "0 killed"
            raise SystemExit(f"mutmut checked no mutant of {module}: {tail}")
        alone = rerun_alone(work, env, codes, children)
        elapsed = time.monotonic() - t0  # the runs alone included
        codes.update(alone)
        starts = def_lines(ROOT / module)
        sources = mutant_sources(work / "mutants" / module)
        counted = {m: c for m, c in codes.items() if not spec.functions or function_of(m) in spec.functions}
        statuses = {m: status_by_exit_code[c] for m, c in counted.items()}
        survivors = []
        for m, status in sorted(statuses.items(), key=lambda t: (function_of(t[0]), int(t[0].rsplit("_", 1)[1]))):
            if status in KILLED:
                continue
            fn = function_of(m)
            where, mutation = describe(sources, m, module, starts.get(fn, 1))
            why = EXPLAINED.get((module, fn, mutation)) or sql_case(module, fn, mutation)
            if why is None:
                why = {"no tests": f"not yet caught: no guarding test calls {fn} in the test process",
                       "not checked": "not yet caught: not run within the time budget",
                       "suspicious": "not yet caught: crashed or hung under mutmut, and its guarding tests "
                                     "fail alone without it, so no run can judge it"}.get(
                    status, "not yet caught" + ("" if status == "survived" else f" ({status})"))
            survivors.append({"where": where, "mutation": mutation, "why": why})
        result = {"killed": sum(s in KILLED for s in statuses.values()), "total": len(statuses), "survivors": survivors}
        run = {"tests": list(spec.tests), "seconds": round(elapsed), "complete": complete,
               "judged_alone": len(alone), "resumed": resume is not None,
               "statuses": {s: list(statuses.values()).count(s) for s in sorted(set(statuses.values()))}}
        return result, run


def write_markdown(doc: dict) -> str:
    lines = ["# Mutation testing (bench/mutation.py, mutmut)", "",
             "Each module's mutants run against its guarding tests only; killed = a guarding test failed "
             "(or hung: a crash or hang of mutmut's forked child is judged again by a run of its own). "
             "A survivor is a change of the code that no guarding test notices: either a "
             "test to write, or an equivalent mutant (explained). \"no tests\": no guarding test calls the "
             "mutated function in the test process (only worker or CLI subprocesses do), counted as not caught.", "",
             "| module | killed / total | % | statuses | guarding tests | run |", "|---|---|---|---|---|---|"]
    for path, r in sorted(doc["modules"].items()):
        how = doc.get("runs", {}).get(path, {})
        pct = f"{100 * r['killed'] / r['total']:.0f}%" if r["total"] else "-"
        statuses = ", ".join(f"{k} {v}" for k, v in how.get("statuses", {}).items())
        run = f"{how.get('seconds', '?')} s" + ("" if how.get("complete", True) else ", budget spent")
        lines.append(f"| {path} | {r['killed']} / {r['total']} | {pct} | {statuses} | "
                     f"{', '.join(how.get('tests', []))} | {run} |")
    missing = [m for m in MODULES if m not in doc["modules"]]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    for path, r in sorted(doc["modules"].items()):
        explained = [s for s in r["survivors"] if s["why"].startswith("equivalent")]
        caught_not = [s for s in r["survivors"] if not s["why"].startswith("equivalent")]
        lines += ["", f"## {path}", f"{len(explained)} equivalent, {len(caught_not)} not yet caught.", ""]
        lines += [f"- `{s['where']}` `{s['mutation'][:160]}`: {s['why']}" for s in r["survivors"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description="Mutation testing of the guarantee-carrying modules (mutmut).")
    ap.add_argument("--modules", default=",".join(MODULES), help="comma-separated module paths (default: all of "
                    "MODULES, in order)")
    ap.add_argument("--budget-s", type=float, default=600, help="wall-clock seconds per module (default 600)")
    ap.add_argument("--max-children", type=int, default=1, help="mutants tested at once (default 1: a shared machine)")
    ap.add_argument("--results", type=Path, default=RESULTS / "mutation.json")
    ap.add_argument("--resume", type=Path, help="the scratch copy (/tmp/tuner-mutation-*) of a run of one module that "
                    "was stopped: go on where it was (e.g. with more --max-children), keeping its results")
    ap.add_argument("--explain-only", action="store_true", help="run nothing: give the recorded survivors "
                    "of the chosen modules their reasons from EXPLAINED again (after an entry was added)")
    args = ap.parse_args()
    chosen = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in MODULES]
    if unknown:
        ap.error(f"unknown module {unknown[0][:80]!r}: choose among {', '.join(MODULES)}")
    if args.resume and len(chosen) != 1:
        ap.error("--resume goes on with one module's run: name that module alone with --modules")
    if not MUTMUT.exists():
        ap.error(f"mutmut is not installed next to {sys.executable}: pip install 'mutmut>=3.8'")
    doc = json.loads(args.results.read_text()) if args.results.exists() else {}
    doc.setdefault("modules", {})
    doc.setdefault("runs", {})  # beside the schema: which tests, how long, mutmut's statuses
    if args.explain_only:
        for module in (m for m in chosen if m in doc["modules"]):
            for s in doc["modules"][module]["survivors"]:
                why = [w for (mod, _, mutation), w in EXPLAINED.items() if (mod, mutation) == (module, s["mutation"])]
                why += list(filter(None, (sql_case(mod, fn, s["mutation"]) for mod, fn in SQL_TEXT if mod == module)))
                s["why"] = why[0] if why else ("not yet caught" if s["why"].startswith("equivalent") else s["why"])
        args.results.write_text(json.dumps(doc, indent=1) + "\n")
        args.results.with_suffix(".md").write_text(write_markdown(doc))
        return
    for module in chosen:
        print(f"{module}: mutants against {', '.join(MODULES[module].tests)} (budget {args.budget_s:.0f} s)", flush=True)
        doc["modules"][module], doc["runs"][module] = run_module(module, MODULES[module], args.budget_s,
                                                                 args.max_children, args.resume)
        r = doc["modules"][module]
        print(f"  killed {r['killed']} of {r['total']} in {doc['runs'][module]['seconds']} s", flush=True)
        args.results.write_text(json.dumps(doc, indent=1) + "\n")
        args.results.with_suffix(".md").write_text(write_markdown(doc))


if __name__ == "__main__":
    main()
