"""Every default once: a setting's value comes from tuner/settings.py (callers pass it), a strategy's
name from the registry (strategies.DEFAULT), a URL is redacted by db/urls.py alone, and each device
class's slug is written once in devices/classes.py. The source is read (AST) for the copies."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from tuner.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"tests", ".venv", "site", "build"}
# the settings' values as workers/ names its parameters (dead_after_s: TUNER_WORKER_DEAD_AFTER_S, ...);
# but the device, which each worker process is given (`tuner worker --device`), not defaulted
SETTING_NAMES = ({f.name for f in dataclasses.fields(Settings)} - {"device"}) | {
    "dead_after_s", "grace_s", "budget_fraction", "misses_trials", "misses_max_jobs", "parallel"}
# the rooms that take settings from their callers: all but the settings module itself
TAKERS = ("workers", "search", "harness", "db", "devices", "search_spaces", "tuner")


def sources(*under: str) -> list[Path]:
    roots = [ROOT / u for u in under] or [ROOT]
    return [p for r in roots for p in r.rglob("*.py") if not SKIP & set(p.relative_to(ROOT).parts)]


def _cli_option(default: ast.expr) -> bool:
    """A CLI command's option (typer.Option(None, ...), the request fields' option_of(...)): declared
    where the command is, its value the settings' when the user gives none."""
    f = default.func if isinstance(default, ast.Call) else None
    return (isinstance(f, ast.Attribute) and f.attr == "Option") or (isinstance(f, ast.Name) and f.id == "option_of")


def shadow_defaults(tree: ast.AST) -> list[tuple[int, str]]:
    """Parameters named after a setting that carry a default of their own (None: not given, the
    caller's settings decide)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            positional = a.posonlyargs + a.args
            pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
            pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
            found += [(node.lineno, f"{arg.arg}={ast.unparse(d)}") for arg, d in pairs
                      if arg.arg in SETTING_NAMES and not (isinstance(d, ast.Constant) and d.value is None)
                      and not _cli_option(d)]
        elif isinstance(node, ast.ClassDef):  # a dataclass's field: `heartbeat_s: float = 10.0`
            found += [(item.lineno, f"{item.target.id}={ast.unparse(item.value)}") for item in node.body
                      if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None
                      and item.target.id in SETTING_NAMES
                      and not (isinstance(item.value, ast.Constant) and item.value.value is None)]
    return found


def test_the_rooms_take_the_settings_values_from_their_callers():
    owner = ROOT / "tuner" / "settings.py"
    bad = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in sources(*TAKERS) if p != owner
           for line, what in shadow_defaults(ast.parse(p.read_text()))]
    assert not bad, "a setting's value is passed by the caller (tuner/settings.py), never defaulted:\n" + "\n".join(bad)


def test_the_scan_finds_a_shadow_default():
    src = "def f(url, *, batch_trials: int = 4): pass\ndef g(dead_after_s=60.0, budget_fraction=0.25, x=1): pass\n"
    assert [what for _, what in shadow_defaults(ast.parse(src))] == ["batch_trials=4", "dead_after_s=60.0",
                                                                     "budget_fraction=0.25"]
    assert not shadow_defaults(ast.parse("def f(url, *, batch_trials: int, width=2): pass\n"))
    # a retune's batches in flight per key: TUNER_RETUNE_PARALLEL, not a copy of the request's default
    assert shadow_defaults(ast.parse("def f(url, *, parallel=2): pass\n")) == [(1, "parallel=2")]
    fields = "class C:\n    heartbeat_s: float = 10.0\n    grace_s: float\n    width: int = 2\n    stall_s: float | None = None\n"
    assert shadow_defaults(ast.parse(fields)) == [(2, "heartbeat_s=10.0")]


def test_the_default_strategy_is_named_by_the_registry_only():
    from search import strategies

    owner = ROOT / "search" / "strategies"
    bad = [f"{p.relative_to(ROOT)}:{node.lineno}" for p in sources() if owner not in p.parents
           for node in ast.walk(ast.parse(p.read_text()))
           if isinstance(node, ast.Constant) and node.value == strategies.DEFAULT]
    assert not bad, f"write strategies.DEFAULT, not {strategies.DEFAULT!r}:\n" + "\n".join(bad)


def test_one_redaction_function():
    defined = [f"{p.relative_to(ROOT)}:{node.name}" for p in sources() for node in ast.walk(ast.parse(p.read_text()))
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "redact" in node.name.lower()]
    assert defined == ["db/urls.py:redact"]


def test_each_device_class_slug_is_written_once():
    from devices.classes import DEVICE_NAMES, KNOWN_DEVICES

    slugs = {dc.slug for dc in KNOWN_DEVICES}
    path = ROOT / "devices" / "classes.py"
    written = [node.value for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Constant) and node.value in slugs]
    assert sorted(written) == sorted(slugs), "a slug is written once; the tables beside it derive from it"
    assert set(DEVICE_NAMES) == slugs - {"cpu-interpreter"}  # every GPU class has the names torch reports


def test_a_nightly_retune_message_carries_every_field_and_no_default_fills_one(tmp_path):
    """tuner.scheduler.retune_args sends the fields the task takes, all from the settings; a
    message that lacks one is refused (it was filled with a copy of the default before)."""
    from tuner import settings as settings_mod
    from tuner.scheduler import retune_args
    from workers import tasks

    settings = settings_mod.from_env({"TUNER_HOME": str(tmp_path), "TUNER_BATCH_TRIALS": "7",
                                      "TUNER_RETUNE_PARALLEL": "3"})
    args = retune_args(settings)
    assert set(args) == set(tasks.RETUNE_FIELDS) and args["batch_trials"] == 7 and args["parallel"] == 3

    missing = {k: v for k, v in args.items() if k != "batch_trials"}
    with pytest.raises(ValueError, match=r"missing \['batch_trials'\]"):
        tasks.retune_fields(missing)
    assert tasks.retune_fields(args)["batch_trials"] == 7


def test_a_batch_is_the_size_its_job_was_queued_with():
    """No batch size is made up for a job that holds none (the janitor's re-send, a worker's check)."""
    from workers.batch import batch_message

    class Job:
        id, kernel, budget_trials, sampler, seed, device_selector = "0" * 32, "matmul", 8, "random", 0, "cpu"
        request = {"keys": [], "trials": 8}

    class Key:
        id, key_hash, key = 1, "k" * 16, {}

    with pytest.raises(ValueError, match="no batch size"):
        batch_message(Job(), Key())
    Job.request = {**Job.request, "batch_trials": 3}
    assert batch_message(Job(), Key()).batch_trials == 3


def test_each_setting_s_default_is_written_once_in_the_settings_dataclass(tmp_path):
    """from_env reads a setting's default from the dataclass (it wrote each one a second time)."""
    from tuner import settings as settings_mod

    tree = ast.parse((ROOT / "tuner" / "settings.py").read_text())
    (from_env,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "from_env"]
    copies = [ast.unparse(call) for call in ast.walk(from_env) if isinstance(call, ast.Call)
              and getattr(call.func, "id", "") in ("num", "_flag")
              and any(isinstance(a, ast.Constant) and type(a.value) in (int, float, bool)
                      for a in call.args[1 if call.func.id == "num" else 2:][:1])]
    copies += [ast.unparse(op) for op in ast.walk(from_env) if isinstance(op, ast.BoolOp)
               and isinstance(op.values[-1], ast.Constant) and op.values[-1].value]
    assert not copies, "read the default from the dataclass (DEFAULTS):\n" + "\n".join(copies)
    read = settings_mod.from_env({"TUNER_HOME": str(tmp_path)})
    assert all(getattr(read, name) == value for name, value in settings_mod.DEFAULTS.items() if name != "extra")
