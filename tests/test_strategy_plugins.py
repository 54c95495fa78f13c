"""A search strategy written outside the package: one module and TUNER_STRATEGY_MODULES, and the
CLI, the request validation, the batch message and the replay all know it."""
import json
import sqlite3

from search import replay, strategies
from keys import TuningKey, config_hash
from devices.targets import target_for
from tests.cli_helpers import run_tuner
from workers.batch import BatchMessage

PLUGIN = {"TUNER_STRATEGY_MODULES": "tests.strategies.in_order", "TUNER_KERNEL_MODULES": "tests.kernels.trivial"}
SHAPE = ["--shape", "N=16", "--dtype", "float32"]


def test_tuner_tune_runs_a_registered_strategy(tmp_path):
    r = run_tuner(["tune", "trivial", *SHAPE, "--trials", "3", "--sampler", "in_order", "--device", "cpu",
                   "--json"], tmp_path, **PLUGIN)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["keys"][0]["trials"] == 3
    with sqlite3.connect(tmp_path / "tuner.db") as conn:
        configs = [json.loads(c) for (c,) in conn.execute("select config from tuning_trials order by id")]
    # the valid space in its own order: P=1, Q=1..3
    assert [(c["P"], c["Q"]) for c in configs] == [(1, 1), (1, 2), (1, 3)]


def test_without_the_setting_the_name_is_unknown_and_listed(tmp_path):
    r = run_tuner(["tune", "trivial", *SHAPE, "--trials", "3", "--sampler", "in_order", "--device", "cpu"],
                  tmp_path, TUNER_KERNEL_MODULES="tests.kernels.trivial")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "unknown sampler 'in_order'; use one of auto, tpe, random, grid" in r.stderr
    assert not (tmp_path / "tuner.db").exists()  # refused before anything was written


def test_the_message_schema_and_the_replay_read_the_same_registry():
    strategies.configure("tests.strategies.in_order")
    try:
        assert "in_order" in strategies.names()
        msg = {"job_id": "a" * 32, "job_key_id": 1, "sampler": "in_order", "seed": None, "budget_trials": 4,
               "batch_trials": 2, "queue": "tune.cpu",
               "key": {"kernel": "trivial", "version": _trivial_version(), "dims": {"N": 16}, "dtype": "float32"}}
        assert BatchMessage.from_json(msg).sampler == "in_order"
        rows = [[p, q, 1, float(p * q), "ok"] for p in range(1, 4) for q in range(1, 4)]
        doc = {"kernel": "trivial", "params": ["P", "Q", "num_warps"], "rows": rows,
               "key": {"kernel": "trivial", "version": "x", "dims": {"N": 16}, "dtype": "float32"}}
        spec = replay.SweepSpec(doc)
        curve = replay.replay_one(spec, TuningKey.from_json(doc["key"]), target_for("interpreter"), "in_order",
                                  seed=0, budget=9)
        assert curve == [1.0] * 9 and len(spec.times) == 9
    finally:
        strategies.configure("")


def _trivial_version() -> str:
    from search_spaces import registry
    return registry.get("trivial").version


def test_a_strategy_sees_only_the_study():
    """The contract: a strategy's answer depends on its seed and on what the study says, so two
    instances (two workers) given the same trials propose the same next step."""
    from search_spaces import registry

    spec, target = registry.get("matmul"), target_for("interpreter")
    key = spec.make_key({"M": 64, "N": 64, "K": 64}, "float32")
    seen = {config_hash(spec.default(key, target)): ("ok", 1.0)}
    for name in strategies.names():
        a, b = strategies.make(name, 7), strategies.make(name, 7)
        assert a.next_config(spec, key, target, dict(seen), 9) == b.next_config(spec, key, target, dict(seen), 9)
