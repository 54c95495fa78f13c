"""Misses: what the runtime served from a fallback level is counted, written in batches to the
database or to a JSON-lines file (imported with `tuner misses import`), listed by `tuner misses`
until the key is tuned; `tuner lookup` shows what a process would be served, and why."""
import json
import logging
import subprocess
import sys
import threading
from datetime import datetime, timezone

from db import store
from db.session import session_scope, upgrade
from devices.classes import CPU_INTERPRETER
from search_spaces import registry
from tests.cli_helpers import ROOT, run_json, run_tuner, tuner_env
from tests.test_runtime import _entry, _key, _live_fp, _write_bundle, live_env  # noqa: F401
from tuner import runtime


def _counting(monkeypatch, live_env, **env):  # noqa: F811
    monkeypatch.setenv("TUNER_MISS_FLUSH_S", "3600")  # written when the test flushes, not on a timer
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    live_env()


def _store_best(url, key, config, fp_hash):
    from devices.fingerprint import live_fingerprint

    fp = live_fingerprint(CPU_INTERPRETER)
    with session_scope(url) as s:
        dc_id, fp_id = store.store_identity(s, CPU_INTERPRETER.to_json(),
                                            {**fp.to_json(), "hash": fp_hash, "driver": fp_hash})
        store.write_best(s, kernel=key.kernel, kernel_version=key.version, key_hash=key.stable_hash,
                         key=key.to_json(), dtype=key.dtype, device_class_id=dc_id, fingerprint_id=fp_id,
                         config=config, config_hash="x", median_ms=1.0, default_ms=2.0, speedup=2.0, cv=0.0,
                         trials=1, job_id=None)


def test_misses_reach_the_database_counted_by_key_and_level(live_env, monkeypatch, db_url):  # noqa: F811
    upgrade(db_url)
    fp = _live_fp()
    _store_best(db_url, _key("tiles", N=100), {"BLOCK": 64, "num_warps": 4}, fp)
    _counting(monkeypatch, live_env, TUNER_DB_URL=db_url)
    for _ in range(5):
        assert runtime.lookup("tiles", N=100, dtype="float32") == {"BLOCK": 64, "num_warps": 4}  # exact: no miss
        runtime.lookup("tiles", N=120, dtype="float32")  # nearest shape
        runtime.lookup("tiles", N=120, dtype="float64")  # not a dtype of tiles: the caller's, not a miss
    assert runtime.flush_misses() == 1
    for _ in range(3):
        runtime.lookup("tiles", N=120, dtype="float32")
    runtime.lookup("tiles", N=100000, dtype="float32")
    assert runtime.flush_misses() == 2  # one record a key, whatever the launches
    with session_scope(db_url) as s:
        rows = [(m.kernel, m.key["dims"], m.device_class, m.fingerprint, m.level, m.count) for m in store.misses(s)]
    assert rows == [("tiles", {"N": 120}, "cpu-interpreter", fp, "nearest", 8),
                    ("tiles", {"N": 100000}, "cpu-interpreter", fp, "nearest", 1)]
    # a key tuned since is no longer a miss
    _store_best(db_url, _key("tiles", N=120), {"BLOCK": 128, "num_warps": 4}, fp)
    with session_scope(db_url) as s:
        assert [m.key["dims"] for m in store.misses(s)] == [{"N": 100000}]
        assert len(store.misses(s, include_tuned=True)) == 2


def test_concurrent_writers_never_lose_a_count(db_url):
    upgrade(db_url)
    now = datetime.now(timezone.utc)
    rec = {"kernel": "tiles", "kernel_version": "v", "key_hash": "h" * 16, "key": {"dims": {"N": 1}}, "dtype": "float32",
           "device_class": "cpu-interpreter", "fingerprint": "f" * 16, "level": "default", "count": 1,
           "first_seen": now, "last_seen": now}

    def write():
        for _ in range(20):
            with session_scope(db_url) as s:
                store.record_misses(s, [rec, rec])

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with session_scope(db_url) as s:
        (row,) = store.misses(s)
    assert row.count == 4 * 20 * 2


def test_a_sink_that_is_down_drops_the_batch_with_one_warning(live_env, monkeypatch, tmp_path, caplog):  # noqa: F811
    _write_bundle(tmp_path / "b.json", [_entry(_key("tiles", N=64), {"BLOCK": 64, "num_warps": 4}, _live_fp())])
    _counting(monkeypatch, live_env, TUNER_CONFIG_BUNDLE=str(tmp_path / "b.json"),
              TUNER_MISS_FILE=str(tmp_path / "no" / "such" / "dir" / "m.jsonl"))
    with caplog.at_level(logging.WARNING, logger="tuner.runtime"):
        for n in (10, 20, 30):
            runtime.lookup("tiles", N=n, dtype="float32")
            assert runtime.flush_misses() == 0
    assert sum("cannot write runtime misses" in r.message for r in caplog.records) == 1
    assert runtime.lookup("tiles", N=10, dtype="float32")  # lookups go on


COUNT_AND_EXIT = """
from tuner import runtime
for _ in range(7):
    runtime.lookup("tiles", N=48, dtype="float32")
    runtime.lookup("tiles", N=96, dtype="float32")
runtime.settle(60)
runtime.lookup("tiles", N=48, dtype="float32")
"""


def test_a_bundle_deployment_writes_misses_to_a_file_that_imports(tmp_path):
    """A process serving from a bundle writes its misses at exit to TUNER_HOME/misses.jsonl;
    `tuner misses import` loads them, and `tuner misses` lists them, most frequent first."""
    key = _key("tiles", N=64)
    bundle = tmp_path / "b.json"
    _write_bundle(bundle, [_entry(key, {"BLOCK": 64, "num_warps": 4}, _live_fp())])
    served = tmp_path / "server"
    env = tuner_env(served, TUNER_DEVICE="cpu", TUNER_CONFIG_BUNDLE=str(bundle), TUNER_KERNEL_MODULES="tests.kernels.tiles",
                    TUNER_RUNTIME_DEADLINE_MS="60000")
    done = subprocess.run([sys.executable, "-c", COUNT_AND_EXIT], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (served / "misses.jsonl").read_text().splitlines()]
    assert sorted((r["key"]["dims"]["N"], r["level"], r["count"]) for r in lines) == [(48, "nearest", 8),
                                                                                       (96, "nearest", 7)]
    home = tmp_path / "tuner"
    # the importing side knows the kernel too: a record of an unregistered one is refused
    proc = run_tuner(["misses", "import", str(served / "misses.jsonl")], home, TUNER_KERNEL_MODULES="tests.kernels.tiles")
    assert proc.returncode == 0 and "imported 2 miss record(s)" in proc.stderr, proc.stderr
    listed = run_json(["misses"], home)
    assert [(r["key"], r["count"], r["level"]) for r in listed] == [({"N": 48}, 8, "nearest"), ({"N": 96}, 7, "nearest")]
    assert run_tuner(["misses", "import", str(served / "misses.jsonl")], home,
                     TUNER_KERNEL_MODULES="tests.kernels.tiles").returncode == 0
    assert [r["count"] for r in run_json(["misses", "--device-class", "cpu"], home)] == [16, 14]
    assert run_json(["misses", "--kernel", "matmul"], home) == []


def test_tuner_lookup_says_what_a_process_would_be_served(tmp_path):
    home = tmp_path / "home"
    tuned = run_json(["tune", "tiles", "--shape", "N=64", "--dtype", "float32", "--trials", "2", "--device", "cpu"],
                     home, TUNER_KERNEL_MODULES="tests.kernels.tiles")
    best = tuned["keys"][0]["config"]
    rows = run_json(["lookup", "tiles", "--shape", "N=64", "--shape", "N=100", "--dtype", "float32"], home,
                    TUNER_KERNEL_MODULES="tests.kernels.tiles")
    assert [(r["shape"], r["level"], r["source"]) for r in rows] == [({"N": 64}, "exact", "database"),
                                                                    ({"N": 100}, "nearest", "database")]
    assert rows[0]["config"] == best == rows[1]["config"] and rows[0]["age_s"] is not None
    assert rows[1]["distance"] > 0 and rows[1]["dims"] == {"N": 64}  # the stored shape that answered
    other = run_json(["lookup", "tiles", "--shape", "N=64", "--fingerprint", "abc123"], home,
                     TUNER_KERNEL_MODULES="tests.kernels.tiles")
    assert other[0]["level"] == "other_fingerprint"
    gpu = run_json(["lookup", "tiles", "--shape", "N=64", "--device-class", "h100-sxm-80gb"], home,
                   TUNER_KERNEL_MODULES="tests.kernels.tiles")
    assert gpu[0]["level"] == "default" and "nothing stored" in gpu[0]["reason"]
    table = run_tuner(["lookup", "tiles", "--shape", "N=100"], home, TUNER_KERNEL_MODULES="tests.kernels.tiles")
    assert table.returncode == 0 and "nearest" in table.stdout


def _live_cpu_worker(url: str) -> str:
    """A worker row of the CPU class with a fresh heartbeat (what `tuner worker --device cpu` writes)."""
    from db import models
    from db.clock import utcnow
    from devices.fingerprint import live_fingerprint

    fp = live_fingerprint(CPU_INTERPRETER)
    with session_scope(url) as s:
        dc_id, fp_id = store.store_identity(s, CPU_INTERPRETER.to_json(), {**fp.to_json(), "hash": fp.hash})
        s.add(models.Worker(name="cpu-w", hostname="test", pid=1, device="cpu", device_class_id=dc_id,
                            fingerprint_id=fp_id, started_at=utcnow(), heartbeat_at=utcnow()))
    return fp.hash


def test_a_miss_no_worker_of_its_class_could_hold_is_skipped_with_the_reason_tuner_submit_gives(tmp_path):
    """A posted miss for a 200000^3 matmul (320 GB of fp32 inputs on the CPU class, 160 GB of fp16
    on an 80 GB H100) is skipped by `tuner retune --misses` with `tuner submit`'s own refusal; a
    64^3 miss of the same classes is planned."""
    from tests import rows
    from tuner.miss_intake import record_posted
    from tuner.runtime.miss_tally import MissKey, record
    from tuner.settings import from_env

    home = tmp_path / "home"
    url = f"sqlite:///{home}/tuner.db"
    home.mkdir()
    upgrade(url)
    cpu_fp = _live_cpu_worker(url)
    rows.live_worker(url, "h100-w", "h100-sxm-80gb")
    spec, now = registry.get("matmul"), datetime.now(timezone.utc).isoformat()
    posted = []
    for slug, dtype, fp in (("cpu-interpreter", "float32", cpu_fp), ("h100-sxm-80gb", "float16", "0" * 16)):
        for n in (200000, 64):
            key = spec.make_key({"M": n, "N": n, "K": n}, dtype)
            posted.append(record(MissKey(key.kernel, key.version, key.stable_hash, key.dims, dtype, slug, fp, "nearest"),
                                 5, now, now))
    assert record_posted(from_env({"TUNER_DB_URL": url, "TUNER_HOME": str(home)}), posted) == (4, 4)

    plan = run_json(["retune", "--misses", "--dry-run"], home)
    assert sorted((j["device_class"], j["key"]["M"]) for j in plan["jobs"]) == [("cpu-interpreter", 64),
                                                                                ("h100-sxm-80gb", 64)]
    skipped = {sk["device_class"]: sk for sk in plan["skipped"]}
    assert sorted(skipped) == ["cpu-interpreter", "h100-sxm-80gb"]
    for slug, dtype in (("cpu-interpreter", "float32"), ("h100-sxm-80gb", "float16")):
        assert skipped[slug]["key"] == {"M": 200000, "N": 200000, "K": 200000}
        refused = run_tuner(["submit", "matmul", "--shape", "M=200000,N=200000,K=200000", "--dtype", dtype,
                             "--device-class", slug], home)
        assert refused.returncode == 2 and refused.stderr.startswith("error: "), refused.stderr
        assert skipped[slug]["reason"] == refused.stderr[len("error: "):].strip()
        assert "GiB for one trial" in skipped[slug]["reason"]
    assert "this host" in skipped["cpu-interpreter"]["reason"]
    assert "device class h100-sxm-80gb" in skipped["h100-sxm-80gb"]["reason"]
    table = run_tuner(["retune", "--misses", "--dry-run"], home)
    assert table.returncode == 0
    assert "skipped matmul M=200000,N=200000,K=200000 float16 on h100-sxm-80gb: matmul" in table.stderr


def _file_counts(path) -> dict[int, int]:
    """N -> launches counted, summed over the records of a JSON-lines miss file."""
    out: dict[int, int] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        out[r["key"]["dims"]["N"]] = out.get(r["key"]["dims"]["N"], 0) + r["count"]
    return out


def test_misses_are_counted_on_every_path(live_env, monkeypatch, tmp_path):  # noqa: F811
    """Each launch served from a fallback level counts once, whichever way it looks its
    configuration up: lookup(), a bound lookup (whose warm path is its own code) and @tuned (by
    position, and by keyword), first launch and warm ones alike."""
    import torch

    from tests.kernels.tiles import tile_kernel
    from tuner.runtime import tuned

    _write_bundle(tmp_path / "b.json", [_entry(_key("tiles", N=64), {"BLOCK": 64, "num_warps": 4}, _live_fp())])
    misses = tmp_path / "m.jsonl"
    _counting(monkeypatch, live_env, TUNER_CONFIG_BUNDLE=str(tmp_path / "b.json"), TUNER_MISS_FILE=str(misses))
    get = runtime.bind("tiles", "N", "dtype")
    kernel = tuned("tiles", key=["N"], dtype_arg="out_ptr")(tile_kernel)
    out, seen = torch.empty(8, dtype=torch.float32), torch.zeros(8, dtype=torch.int64)
    launches = {100: 3, 200: 4, 300: 5, 400: 6}
    for _ in range(launches[100]):
        runtime.lookup("tiles", N=100, dtype="float32")
    for _ in range(launches[200]):
        get(200, "float32")
    for _ in range(launches[300]):
        kernel.config_for((out, seen, 300), {})
    for _ in range(launches[400]):
        kernel.config_for((out,), {"seen_ptr": seen, "N": 400})
    for _ in range(5):
        get(64, "float32")  # exact: never a miss
    assert runtime.flush_misses() == len(launches)
    assert _file_counts(misses) == launches


def test_retune_of_misses_queues_the_most_frequent_keys_first(tmp_path):
    """`tuner retune --misses --top 2` picks, per class, the two keys served most often from a
    fallback level, their counts summed over levels (a key seen at two levels outranks one seen
    more often at one)."""
    from tests import rows
    from tuner.miss_intake import retune_misses
    from tuner.settings import from_env

    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    rows.live_worker(url, "w1", "h100-sxm-80gb")
    now = datetime.now(timezone.utc)
    counts = {10: {"nearest": 5, "default": 4}, 20: {"nearest": 7}, 30: {"nearest": 3}, 40: {"default": 6}}
    records = []
    for n, levels in counts.items():
        key = _key("tiles", N=n)
        for level, count in levels.items():
            records.append({"kernel": "tiles", "kernel_version": key.version, "key_hash": key.stable_hash,
                            "key": key.to_json(), "dtype": "float32", "device_class": "h100-sxm-80gb",
                            "fingerprint": "f" * 16, "level": level, "count": count, "first_seen": now, "last_seen": now})
    with session_scope(url) as s:
        store.record_misses(s, records)
    total = {n: sum(levels.values()) for n, levels in counts.items()}
    want = sorted(total, key=total.get, reverse=True)[:2]
    # what `tuner retune --misses --top 2 --dry-run --json` prints (its subprocess costs 10 s here)
    out = retune_misses(from_env({"TUNER_DB_URL": url, "TUNER_HOME": str(tmp_path)}), None, None, 2, None, True)
    assert [(j["key"]["N"], j["count"]) for j in out["jobs"]] == [(n, total[n]) for n in want]
    assert sorted(j["key"]["N"] for j in out["skipped"]) == sorted(set(counts) - set(want))
    assert all("beyond the top 2" in j["reason"] for j in out["skipped"])


def _miss(kernel_version, n, device_class, count, kernel="tiles"):
    key = _key("tiles", N=n)
    key_json = {**key.to_json(), "kernel": kernel, "version": kernel_version}
    now = datetime.now(timezone.utc)
    own = (kernel, kernel_version) == ("tiles", key.version)
    return {"kernel": kernel, "kernel_version": kernel_version,
            "key_hash": key.stable_hash if own else f"{kernel}{n}".ljust(16, "0"), "key": key_json,
            "dtype": "float32", "device_class": device_class, "fingerprint": "f" * 16, "level": "nearest",
            "count": count, "first_seen": now, "last_seen": now}


def test_misses_become_jobs_only_where_a_worker_can_tune_them(tmp_path):
    """Each missed key becomes one job of kind `miss` on its class, with a message a worker of the
    class takes, unless no live worker of the class exists, a job for it is open, it is tuned
    under a stack live workers run, its kernel version is not the registered one, it has too few
    misses or the kernel is not registered; a second run queues nothing twice, and a run that
    finds the lease taken queues nothing."""
    from db import models
    from tests import rows
    from workers.miss_jobs import LOCK, enqueue_misses

    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    rows.live_worker(url, "w1", "h100-sxm-80gb")
    version = _key("tiles", N=1).version
    with session_scope(url) as s:
        store.record_misses(s, [_miss(version, 10, "h100-sxm-80gb", 9), _miss(version, 20, "h100-sxm-80gb", 1),
                                _miss(version, 30, "mi300x", 5), _miss("0ld", 40, "h100-sxm-80gb", 4),
                                _miss(version, 50, "h100-sxm-80gb", 6), _miss("v", 60, "h100-sxm-80gb", 3, "nosuch")])
    rows.best(url, "h100-sxm-80gb", {"N": 50}, 1.0, kernel="tiles", dtype="float32", config={"BLOCK": 32, "num_warps": 4})
    sent = []

    def run(**kw):
        return enqueue_misses(url, sent.append, holder="test", dead_after_s=60, trials=6, top=10, min_count=2,
                              batch_trials=4, parallel=2, **kw)

    out = run()
    assert [(j["key"]["N"], j["count"], j["device_class"]) for j in out["jobs"]] == [(10, 9, "h100-sxm-80gb")]
    why = {j["key"]["N"]: j["reason"] for j in out["skipped"]}
    assert set(why) == {30, 40, 50, 60}  # N=20 has fewer misses than --min-count
    assert "no live worker of class mi300x" in why[30]
    assert "version 0ld" in why[40] and "tuned under a stack live workers run" in why[50]
    assert "kernel nosuch is not registered" in why[60]
    with session_scope(url) as s:
        job = s.get(models.Job, out["jobs"][0]["job"])
        (key_row,) = s.query(models.JobKey).filter_by(job_id=job.id).all()
        assert (job.kind, job.sampler, job.budget_trials, job.device_selector) == ("miss", "auto", 6, "h100-sxm-80gb")
        assert job.request["misses"]["count"] == 9 and job.request["batch_trials"] == 4
        assert key_row.key["dims"] == {"N": 10} and key_row.key_hash == _key("tiles", N=10).stable_hash
    # 6 trials in batches of 4: two batches, one message each (parallel 2), to the class's queue
    assert [(m.job_id, m.job_key_id, m.budget_trials, m.batch_trials, m.queue) for m in sent] == \
        [(job.id, key_row.id, 6, 4, "tune.h100-sxm-80gb")] * 2
    again = run()
    assert again["jobs"] == [] and len(sent) == 2
    assert "already queued or running" in {j["key"]["N"]: j["reason"] for j in again["skipped"]}[10]
    with session_scope(url) as s:
        assert store.acquire_lock(s, LOCK, "someone else", ttl_s=300)
    locked = run()
    assert locked["locked_by_other"] and locked["jobs"] == [] and len(sent) == 2
    assert run(dry_run=True)["skipped"]  # a dry run reads without the lease
