"""Retunes during a rolling update, a submit racing a retune, and a job left running by a crash
(issue 18, item 7), against the real PostgreSQL, Redis and `tuner worker` processes.

The local tunes run under this host's stack (driver "none"); workers started with
TUNER_FINGERPRINT_OVERRIDE=driver=999.1 are the new stack.
"""
import json
import os
import signal
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text

from tests.cli_helpers import ROOT
from tests.services import WorkerProc, pg_database, redis_url, run_cli, service_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NEW = "999.1"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    home = tmp_path_factory.mktemp("races")
    with pg_database() as db_url:
        env = service_env(home, db_url, redis_url(), TUNER_KERNEL_MODULES="tests.kernels.trivial,tests.kernels.slow")
        assert run_cli(env, "db", "upgrade").returncode == 0
        engine = create_engine(db_url)
        workers: dict[str, WorkerProc] = {}

        def start(name: str, driver: str | None = None) -> WorkerProc:
            if name in workers and workers[name].alive():
                return workers[name]
            extra = {"TUNER_FINGERPRINT_OVERRIDE": f"driver={driver}"} if driver else {}
            w = workers[name] = WorkerProc(name, dict(env, **extra), home)
            wait_for(lambda: holding(engine, name) is not False, 180, f"worker {name} to register")
            return w

        yield {"env": env, "engine": engine, "start": start, "workers": workers, "home": home}
        for w in workers.values():
            w.stop()
        engine.dispose()


def holding(engine, name):
    """The job key a live worker holds (None: none); False when it is not live."""
    with engine.connect() as c:
        row = c.execute(text("SELECT holding_key_id FROM workers WHERE name = :n AND stopped_at IS NULL AND "
                             "heartbeat_at > now() - interval '4 seconds'"), {"n": f"{name}@test"}).first()
    return False if row is None else row[0]


def cli_json(env, *args):
    proc = run_cli(env, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def state(engine, job):
    with engine.connect() as c:
        return c.execute(text("SELECT state, error FROM jobs WHERE id = :j"), {"j": job}).one()


def ended(engine, job, timeout=300):
    wait_for(lambda: state(engine, job)[0] in ("done", "failed", "cancelled"), timeout, f"job {job} to end")
    return state(engine, job)


def tune_locally(env, n):
    return cli_json(env, "tune", "trivial", "--shape", f"N={n}", "--dtype", "float32", "--trials", "8", "--seed", "0",
                    "--device", "cpu")


def retune_of(env, n):
    """Queue the stale keys of the trivial kernel; the id of the job that holds key N=n."""
    out = cli_json(env, "retune", "--stale-only", "--kernel", "trivial")
    jobs = [j["job"] for j in out["jobs"] if {"N": n, "dtype": "float32"} in j["keys"]]
    assert len(jobs) == 1, out
    return jobs[0]


def test_a_retune_key_is_measured_only_by_a_worker_of_the_new_stack(world):
    """A rolling update: an old-stack worker that takes a retune's batch while the new-stack
    worker is busy hands it back, instead of pinning the key's study to the old stack and spending
    the retune's budget there."""
    env, engine = world["env"], world["engine"]
    tune_locally(env, 2001)
    world["start"]("new", NEW)
    busy = cli_json(env, "submit", "slow", "--shape", "N=1000", "--dtype", "float32", "--device-class", "cpu",
                    "--trials", "2", "--parallel", "1", "--sampler", "random")["job"]
    wait_for(lambda: holding(engine, "new"), 120, "the new-stack worker to be busy")
    world["start"]("old")  # this host's stack, as the key's best
    job = retune_of(env, 2001)
    assert ended(engine, job)[0] == "done"
    with engine.connect() as c:
        drivers = c.execute(text("SELECT DISTINCT f.driver FROM tuning_trials t JOIN stack_fingerprints f "
                                 "ON f.id = t.fingerprint_id WHERE t.job_id = :j"), {"j": job}).scalars().all()
    assert drivers == [NEW], drivers
    assert "retune key queued for stack" in world["workers"]["old"].text()
    assert ended(engine, busy)[0] == "done"


def test_a_submit_racing_a_retune_keeps_the_retune_s_seeds_and_old_best_row(world):
    """A job submitted on a stale key creates the new stack's study (with its own seeds, here none)
    before the retune's first batch: the retune still measures the old best first on the new
    stack, and its report has the old best's time there."""
    env, engine = world["env"], world["engine"]
    if "old" in world["workers"]:
        world["workers"].pop("old").stop()
    world["start"]("new", NEW)
    old = tune_locally(env, 2002)["keys"][0]["config"]
    # 150 trials: about 18 s of work after its second, where 30 ended 3.5 s after it (measured), at
    # times before the retune below was queued, and a key tuned on the new stack is no longer stale
    racing = cli_json(env, "submit", "trivial", "--shape", "N=2002", "--dtype", "float32", "--device-class", "cpu",
                      "--trials", "150", "--parallel", "1", "--sampler", "random", "--seed", "4")["job"]

    def racing_trials():
        with engine.connect() as c:
            return c.execute(text("SELECT count(*) FROM tuning_trials WHERE job_id = :j"), {"j": racing}).scalar()

    wait_for(lambda: racing_trials() >= 2, 120, "the racing job to create the study")
    job = retune_of(env, 2002)
    assert ended(engine, job)[0] == "done"
    with engine.connect() as c:
        first = c.execute(text("SELECT config FROM tuning_trials WHERE job_id = :j AND status != 'invalid' "
                               "ORDER BY id LIMIT 1"), {"j": job}).scalar()
        racing_measured_it = c.execute(text("SELECT count(*) FROM tuning_trials WHERE job_id = :j AND "
                                            "config->>'P' = :p AND config->>'Q' = :q"),
                                       {"j": racing, "p": str(old["P"]), "q": str(old["Q"])}).scalar()
    report = cli_json(env, "report", "retune")
    (row,) = [r for r in report["keys"] if r["job"] == job]
    assert row["old_best_ms_new_stack"] is not None, row
    # measured first by the retune (unless the racing job's random draw measured it already)
    assert racing_measured_it or (json.loads(first) if isinstance(first, str) else first) == old
    assert ended(engine, racing)[0] == "done"


def test_a_local_tune_killed_mid_run_is_failed_by_the_janitor(world):
    """A `tuner tune` killed with SIGKILL leaves its job running; the janitor of a live worker finds
    that its process is gone and fails it, so nothing waits on it for ever."""
    env, engine = world["env"], world["engine"]
    world["start"]("new", NEW)  # a live worker, whose janitor finds the job
    log = open(world["home"] / "tune.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tuner.cli", "tune", "slow", "--shape", "N=500", "--dtype",
                             "float32", "--trials", "30", "--device", "cpu"], env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)

    def job():
        with engine.connect() as c:
            return c.execute(text("SELECT j.id FROM jobs j WHERE j.kind = 'tune' AND j.origin = 'local' AND "
                                  "j.kernel = 'slow' AND j.state = 'running' AND EXISTS (SELECT 1 FROM tuning_trials t "
                                  "WHERE t.job_id = j.id)")).scalar()

    try:
        wait_for(lambda: job() is not None, 180, "the local tune to measure")
        victim = job()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        log.close()
    st, error = ended(engine, victim, timeout=60)
    assert st == "failed" and "is gone" in error, (st, error)
