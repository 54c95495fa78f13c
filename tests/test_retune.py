"""Nightly retune, proved on this machine: tune, simulate a driver update with
TUNER_FINGERPRINT_OVERRIDE, retune through a real worker, and check rows, report and runtime."""
import json
import subprocess
import sys
import threading

import pytest
from sqlalchemy import create_engine, text

from tests.cli_helpers import ROOT
from tests.services import WorkerProc, pg_database, redis_url, run_cli, service_env, wait_for

pytestmark = pytest.mark.integration
KEYS = ["--shape", "N=16", "--shape", "N=64", "--dtype", "float32"]


tuner = run_cli


def tuner_json(env, *args):
    proc = tuner(env, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)




def fingerprints(engine):
    with engine.connect() as c:
        return dict(c.execute(text("select f.driver, count(*) from best_configs b join stack_fingerprints f "
                                   "on f.id = b.fingerprint_id where b.superseded_at is null group by f.driver")).all())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    home = tmp_path_factory.mktemp("retune")
    with pg_database() as db_url:
        env = service_env(home, db_url, redis_url())
        assert tuner(env, "db", "upgrade").returncode == 0
        engine = create_engine(db_url)
        workers = []
        yield {"env": env, "engine": engine, "home": home, "workers": workers, "db_url": db_url}
        for w in workers:
            w.stop()
        engine.dispose()


def _start_worker(world, name, driver):
    env = dict(world["env"], TUNER_FINGERPRINT_OVERRIDE=f"driver={driver}")
    w = WorkerProc(name, env, world["home"])
    world["workers"].append(w)
    wait_for(lambda: _registered(world, f"{name}@test", driver), 180, f"worker {name} to register")
    return w


def _registered(world, name, driver):
    with world["engine"].connect() as c:
        return c.execute(text("select count(*) from workers w join stack_fingerprints f on f.id = w.fingerprint_id "
                              "where w.name = :n and f.driver = :d and w.heartbeat_at > now() - interval '5 seconds'"),
                         {"n": name, "d": driver}).scalar() == 1


@pytest.mark.slow
def test_driver_update_is_retuned_once_warm_started_and_reported(world, tmp_path):
    env, engine = world["env"], world["engine"]
    tuned = tuner_json(env, "tune", "trivial", *KEYS, "--trials", "16", "--seed", "0", "--device", "cpu")
    assert all(k["config"] for k in tuned["keys"])
    assert fingerprints(engine) == {"none": 2}

    # nothing is stale while no worker runs another stack
    assert tuner_json(env, "retune", "--stale-only")["jobs"] == []
    _start_worker(world, "new-driver", "999.1")

    dry = tuner_json(env, "retune", "--stale-only", "--dry-run")
    assert len(dry["jobs"]) == 1 and len(dry["jobs"][0]["keys"]) == 2
    with engine.connect() as c:
        assert c.execute(text("select count(*) from jobs where kind='retune'")).scalar() == 0

    first = tuner_json(env, "retune", "--stale-only")
    assert len(first["jobs"]) == 1
    assert tuner_json(env, "retune", "--stale-only")["jobs"] == []  # already queued: nothing twice
    job = first["jobs"][0]["job"]
    wait_for(lambda: tuner_json(env, "status", job)["state"] in ("done", "failed"), 240, "the retune job")
    assert tuner_json(env, "status", job)["state"] == "done"

    assert fingerprints(engine) == {"none": 2, "999.1": 2}  # new rows, and the old ones kept
    assert tuner_json(env, "retune", "--stale-only")["jobs"] == []  # repaired: not stale any more

    plot = tmp_path / "retune.png"
    rep = tuner_json(env, "report", "retune", "--plot", str(plot))
    assert rep["run"] == first["run"] and len(rep["keys"]) == 2
    for r in rep["keys"]:
        assert r["old_best_ms_old_stack"] and r["old_best_ms_new_stack"] and r["new_best_ms_new_stack"]
        assert r["trials_spent"] < r["original_trials"]  # warm start: a fraction of the cold budget
        # the old best is measured first on the new stack, so the retune is never slower than it
        assert r["new_best_ms_new_stack"] <= r["old_best_ms_new_stack"] * 3  # loose: timings of a loaded 2-core machine
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = tuner(env, "report", "retune")
    assert table.returncode == 0 and "old best" in table.stdout

    hist = tuner_json(env, "history", "trivial", "--shape", "N=16", "--dtype", "float32", "--device-class", "cpu")
    assert {h["fingerprint"] for h in hist} and len(hist) == 2

    code = ("import json; from tuner.runtime import lookup, settle; lookup('trivial', N=16, dtype='float32'); "
            "settle(); print(json.dumps(lookup('trivial', N=16, dtype='float32')))")
    with engine.connect() as c:
        new_cfg = c.execute(text("select b.config from best_configs b join stack_fingerprints f on f.id=b.fingerprint_id "
                                 "where f.driver='999.1' and b.key->'dims'->>'N' = '16'")).scalar()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env=dict(env, TUNER_DEVICE="cpu", TUNER_FINGERPRINT_OVERRIDE="driver=999.1"))
    assert json.loads(out.stdout) == (json.loads(new_cfg) if isinstance(new_cfg, str) else new_cfg)


def test_two_schedulers_at_once_queue_each_key_once(world):
    env, engine = world["env"], world["engine"]
    _start_worker(world, "newer-driver", "999.2")  # every current key is stale for this stack
    results = []

    def run():
        results.append(tuner_json(env, "retune", "--stale-only"))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queued = [j for r in results for j in r["jobs"]]
    assert len(queued) == 1, results
    with engine.connect() as c:
        keys = c.execute(text("select k.key_hash from job_keys k join jobs j on j.id=k.job_id "
                              "where j.kind='retune' and j.state in ('queued','running')")).scalars().all()
    assert len(keys) == len(set(keys))
    job = queued[0]["job"]
    wait_for(lambda: tuner_json(env, "status", job)["state"] in ("done", "failed"), 240, "the second retune")



def test_a_rolling_upgrade_retunes_a_key_once_timed_as_it_was_tuned(world):
    """Two stacks live in one class at once (999.1 and 999.2 here), as in a rolling driver update:
    a key tuned under neither is stale for both, and is queued once (it used to be queued once
    per stack, which broke the job's unique key). Its retune times trials as the old best was
    timed, so that old and new times compare."""
    env, engine = world["env"], world["engine"]
    tuned = tuner_json(env, "tune", "trivial", "--shape", "N=32", "--dtype", "float32", "--trials", "4",
                       "--seed", "0", "--device", "cpu", "--rotate-buffers", "2")
    assert tuned["keys"][0]["config"]
    out = tuner_json(env, "retune", "--stale-only", "--kernel", "trivial")
    with engine.connect() as c:
        rows = c.execute(text("select j.id, j.request from jobs j join job_keys k on k.job_id = j.id "
                              "where j.kind = 'retune' and k.key->'dims'->>'N' = '32'")).all()
    assert len(rows) == 1, (out, rows)
    (job, request), = rows
    request = json.loads(request) if isinstance(request, str) else request
    assert request["measurement"] == {"rotate_buffers": 2, "cuda_graph": False, "max_cv": None}
    planned = [j for j in out["jobs"] if j["job"] == job]
    assert not planned or len(planned[0]["new_fingerprint"]) == 2
    wait_for(lambda: tuner_json(env, "status", job)["state"] in ("done", "failed"), 240, "the rotated retune")
    assert tuner_json(env, "status", job)["state"] == "done"
    with engine.connect() as c:
        trials = c.execute(text("select study_name, message from tuning_trials where job_id = :j and status = 'ok'"),
                           {"j": job}).all()
    assert trials and all(name.endswith("+rot2") and "2 rotating input sets" in message for name, message in trials)

@pytest.mark.slow
def test_scheduler_sends_the_nightly_retune(world):
    env = dict(world["env"], TUNER_RETUNE_CRON="* * * * *")
    log = world["home"] / "beat.log"
    with open(log, "w") as f:
        beat = subprocess.Popen([sys.executable, "-m", "tuner.cli", "scheduler"], env=env, cwd=ROOT,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        logs = lambda: "".join(w.text() for w in world["workers"] if w.alive())  # noqa: E731
        wait_for(lambda: "nightly retune" in logs(), 90, "a worker to run the scheduled retune")
    finally:
        beat.terminate()
        beat.wait(20)


def test_bad_cron_is_one_line_exit_2(world):
    proc = tuner(dict(world["env"], TUNER_RETUNE_CRON="every night"), "scheduler")
    assert proc.returncode == 2 and "must have 5 fields" in proc.stderr


def test_a_stale_key_no_worker_of_its_class_could_hold_is_skipped_with_the_reason(tmp_path):
    """A stale 200000^3 fp16 matmul best (160 GB of inputs; stored straight in the database) is
    not queued for an 80 GB H100 whose driver changed: it is listed with `tuner submit`'s reason;
    the 64^3 key beside it is planned."""
    from tests import rows
    from tests.cli_helpers import run_json, run_tuner

    home = tmp_path / "home"
    home.mkdir()
    url = rows.schema(f"sqlite:///{home}/tuner.db")
    for n in (200000, 64):
        rows.best(url, "h100-sxm-80gb", {"M": n, "N": n, "K": n}, 1.0)
    rows.live_worker(url, "h100-new", "h100-sxm-80gb", driver="999.9")
    plan = run_json(["retune", "--dry-run"], home)
    assert [k["M"] for j in plan["jobs"] for k in j["keys"]] == [64]
    (skipped,) = plan["skipped"]
    assert (skipped["device_class"], skipped["key"]["M"]) == ("h100-sxm-80gb", 200000)
    refused = run_tuner(["submit", "matmul", "--shape", "M=200000,N=200000,K=200000", "--dtype", "float16",
                         "--device-class", "h100-sxm-80gb"], home)
    assert refused.returncode == 2 and skipped["reason"] == refused.stderr[len("error: "):].strip()
    table = run_tuner(["retune", "--dry-run"], home)
    assert table.returncode == 0 and "skipped matmul M=200000,N=200000,K=200000 float16" in table.stderr
