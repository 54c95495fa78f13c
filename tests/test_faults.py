"""Work never lost, counted twice, stuck or taken from the wrong place: each fault staged against the
real PostgreSQL, Redis and `tuner worker` processes (issue 18).

The kernels are the tests' trivial one and tests/kernels/slow.py (`slow`: a launch sleeps the key's
N milliseconds plus P*Q; `nofinal`: a finalization that always fails).
"""
import json

import pytest
from sqlalchemy import create_engine, text

from tests.services import (
    WorkerProc,
    database_outage,
    dropped_results,
    key_audit,
    pg_database,
    redis_llen,
    redis_url,
    run_cli,
    service_env,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KERNELS = "tests.kernels.trivial,tests.kernels.slow"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A database and a broker of the module's own, and `workers(n, **settings)`: n live workers
    with exactly those settings (others are stopped first)."""
    home = tmp_path_factory.mktemp("faults")
    with pg_database() as db_url:
        base = service_env(home, db_url, redis_url(), TUNER_KERNEL_MODULES=KERNELS)
        assert run_cli(base, "db", "upgrade").returncode == 0
        engine = create_engine(db_url)
        running: list[tuple[WorkerProc, dict]] = []
        count = [0]

        def workers(n: int, **settings: str) -> list[WorkerProc]:
            for w, had in list(running):
                if had != settings or not w.alive() or len(running) > n:
                    w.stop()
                    running.remove((w, had))
            while len(running) < n:
                count[0] += 1
                running.append((WorkerProc(f"f{count[0]}", dict(base, **settings), home), settings))
            names = {f"{w.name}@test" for w, _ in running}
            wait_for(lambda: names <= live(engine), 180, "workers to register")
            return [w for w, _ in running]

        yield {"env": base, "engine": engine, "workers": workers, "db_url": db_url, "home": home,
               "logs": lambda: "".join(w.text() for w, _ in running)}
        for w, _ in running:
            w.stop()
        engine.dispose()


def live(engine) -> set[str]:
    with engine.connect() as c:
        return set(c.execute(text("SELECT name FROM workers WHERE stopped_at IS NULL AND "
                                  "heartbeat_at > now() - interval '4 seconds'")).scalars())


def submit(env, kernel, n, trials, *extra, seed=0):
    proc = run_cli(env, "submit", kernel, "--shape", f"N={n}", "--dtype", "float32", "--device-class", "cpu",
                   "--trials", str(trials), "--seed", str(seed), "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["job"]


def job_state(engine, job):
    with engine.connect() as c:
        return c.execute(text("SELECT state, error FROM jobs WHERE id = :j"), {"j": job}).one()


def wait_done(engine, job, timeout=240, states=("done",)):
    wait_for(lambda: job_state(engine, job)[0] in ("done", "failed", "cancelled"), timeout, f"job {job} to end")
    state, error = job_state(engine, job)
    assert state in states, (state, error)


def test_a_killed_worker_s_trial_is_failed_and_proposed_again(fleet, tmp_path):
    """Item 1: the in-flight trial of a worker killed with SIGKILL does not stay RUNNING (a phantom
    point for constant-liar TPE): Optuna's heartbeat finds it dead, it is failed, and its
    configuration is proposed again and measured. The worker is killed once its benchmark process
    has started launching the trial (tests/kernels/slow.py leaves a file at each launch; each of the
    trial's launches sleeps 0.8 s), and the trial measured again is the one Optuna's callback
    enqueued for the dead one (a sampler proposing the same configuration anew proves nothing)."""
    from tests.kernels.slow import MARKS

    marks = tmp_path / MARKS
    marks.mkdir()
    (victim,) = fleet["workers"](1, TMPDIR=str(tmp_path))
    engine = fleet["engine"]
    job = submit(fleet["env"], "slow", 800, 3, "--parallel", "1", "--sampler", "random")  # a trial: 4 x 0.8 s

    def running_trial():
        with engine.connect() as c:
            if not c.execute(text("SELECT to_regclass('trial_params') IS NOT NULL")).scalar():
                return None  # Optuna's tables not there yet (they were once created by the first worker)
            return c.execute(text(
                "SELECT t.number, max(CASE WHEN p.param_name = 'P' THEN p.param_value END), "
                "max(CASE WHEN p.param_name = 'Q' THEN p.param_value END) FROM trials t "
                "JOIN studies s ON s.study_id = t.study_id JOIN trial_params p ON p.trial_id = t.trial_id "
                "JOIN job_keys k ON k.study_name = s.study_name WHERE k.job_id = :j AND t.state = 'RUNNING' "
                "GROUP BY t.number"), {"j": job}).first()

    wait_for(lambda: any(marks.iterdir()), 120, "the benchmark process to launch a trial", poll_s=0.05)
    victim.kill()
    # a killed worker changes nothing more: the trial RUNNING now is the one it ran, and the marks
    # show that it was launched (categorical params are stored as the index of the value)
    running = running_trial()
    assert running is not None, "the worker was killed between two trials, not during one"
    number, p, q = running
    launched = {m.name.split("-", 1)[1] for m in marks.iterdir()}
    assert f"P{int(p) + 1}-Q{int(q) + 1}" in launched, (launched, p, q)
    fleet["workers"](1)  # a new worker takes the key over once the janitor finds it stalled
    wait_done(engine, job)
    (key,) = key_audit(engine, job)
    wait_for(lambda: key_audit(engine, job)[0]["running"] == 0, 60, "no trial of the study left RUNNING")
    assert 3 <= key["counted"] <= 4 and key["duplicated"] == 0, key
    with engine.connect() as c:
        killed = c.execute(text("SELECT t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
                                "WHERE s.study_name = :s AND t.number = :n"),
                           {"s": key["study_name"], "n": number}).scalar()
        again = c.execute(text("SELECT count(*) FROM tuning_trials WHERE job_id = :j AND status = 'ok' AND "
                               "config->>'P' = :p AND config->>'Q' = :q"),
                          {"j": job, "p": str(int(p) + 1), "q": str(int(q) + 1)}).scalar()
        retried = c.execute(text("SELECT t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
                                 "JOIN trial_system_attributes a ON a.trial_id = t.trial_id "
                                 "WHERE s.study_name = :s AND a.key = 'failed_trial' AND a.value_json = :n"),
                            {"s": key["study_name"], "n": str(number)}).scalars().all()
    assert killed == "FAIL"
    assert retried == ["COMPLETE"], "the dead worker's trial was not enqueued again and measured"
    assert again == 1, "the dead worker's configuration was not measured again"


def test_three_workers_on_one_key_never_measure_a_configuration_twice(fleet):
    """Item 2: workers see each other's trials in flight. `grid` follows one seeded order, so
    without that all three propose the same configuration at once."""
    fleet["workers"](3)
    dropped = dropped_results(fleet["logs"]())
    job = submit(fleet["env"], "trivial", 1001, 24, "--parallel", "3", "--sampler", "grid", seed=5)
    wait_done(fleet["engine"], job)
    (key,) = key_audit(fleet["engine"], job)
    assert key["duplicated"] == 0, key
    assert 24 <= key["counted"] <= 24 + 3, key
    # measurements, not stored rows: a second measurement of a configuration is dropped when stored
    assert dropped_results(fleet["logs"]()) == dropped
    with fleet["engine"].connect() as c:
        workers = c.execute(text("SELECT count(DISTINCT worker_id) FROM tuning_trials WHERE job_id = :j"),
                            {"j": job}).scalar()
    assert workers >= 2  # they did cooperate


def test_a_slow_batch_of_a_live_worker_is_not_re_sent_and_is_finalized_once(fleet):
    """Items 3 and 4: a trial (4 launches of 1.2 s) outlasts the stall time (3 s) and the final
    re-measurement (up to 3 configurations x 3 rounds) outlasts three stall times; the worker is
    alive and holds the key throughout, so the janitor re-sends nothing and never gives the key
    to a second finalizer."""
    fleet["workers"](2, TUNER_STALL_S="3")
    job = submit(fleet["env"], "slow", 1200, 2, "--parallel", "1", "--sampler", "random", seed=7)
    wait_done(fleet["engine"], job, timeout=300)
    (key,) = key_audit(fleet["engine"], job)
    with fleet["engine"].connect() as c:
        bests = c.execute(text("SELECT count(*) FROM best_configs WHERE job_id = :j"), {"j": job}).scalar()
    assert f"re-sent stalled key {key['id']} " not in fleet["logs"]()
    assert bests == 1 and key["finalize_attempts"] == 1, key


def test_the_broker_s_visibility_timeout_exceeds_the_longest_batch():
    """Item 3: Redis re-delivers an unacknowledged message after its visibility timeout; it was 300 s,
    shorter than a batch of 4 trials of 120 s each plus the final re-measurement."""
    from tuner.settings import from_env
    from tuner.worker_process import worker_app

    settings = from_env({"TUNER_BROKER_URL": redis_url()})
    # each trial a compile and a measurement, each up to the trial timeout (4 x 2 x 120 s), then the
    # final re-measurement: 3 leaders, the default and the current best, 3 rounds, each run up to
    # twice (--max-cv) of 120 s
    longest = (2 * 4 + 5 * 3 * 2) * 120
    assert settings.batch_trials == 4 and settings.trial_timeout_s == 120
    assert worker_app(settings).conf.broker_transport_options["visibility_timeout"] > longest


def test_a_database_outage_loses_no_message(fleet):
    """Item 6: while PostgreSQL refuses connections, a batch that fails on it goes back to its queue
    after a back-off, never acknowledged as done. The janitor is kept out of it (stall time 600 s):
    every message that the job ends with is one that was queued before the outage."""
    fleet["workers"](1, TUNER_STALL_S="600")
    engine = fleet["engine"]
    job = submit(fleet["env"], "trivial", 1002, 30, "--parallel", "3", "--sampler", "random", seed=3)
    wait_for(lambda: key_audit(engine, job)[0]["counted"] >= 3, 120, "trials to start")
    engine.dispose()
    with database_outage(fleet["db_url"]):
        wait_for(lambda: fleet["logs"]().count("goes back to its queue") >= 3, 60, "three batches put back")
    wait_done(engine, job, timeout=300)
    (key,) = key_audit(engine, job)
    assert 30 <= key["counted"] <= 31 and key["duplicated"] == 0, key


def test_a_finalization_that_keeps_failing_fails_the_job_with_the_reason(fleet):
    """Item 6: a key whose finalization raises every time is tried a bounded number of times, then
    the key and the job are failed with the reason (it used to bounce between the janitor and the
    workers for ever)."""
    fleet["workers"](1, TUNER_STALL_S="3")
    job = submit(fleet["env"], "nofinal", 1003, 3, "--parallel", "1", "--sampler", "random")
    wait_done(fleet["engine"], job, timeout=180, states=("failed",))
    state, error = job_state(fleet["engine"], job)
    assert "finalization failed 3 times" in error and "staged finalization failure" in error, error
    (key,) = key_audit(fleet["engine"], job)
    assert key["state"] == "failed" and key["finalize_attempts"] == 3


def test_a_forged_message_is_refused(fleet):
    """Item 8: a message is checked against its job's rows. Forged here on the real Redis: one that
    inflates a queued job's budget (10x), and one that points a CPU worker at a job of another
    device class; neither runs a trial, and the job ends with the budget its row gives."""
    from workers.app import make_app

    env, engine = fleet["env"], fleet["engine"]
    for w in fleet["workers"](0):
        w.stop()
    job = submit(env, "trivial", 1004, 4, "--parallel", "1")
    other = json.loads(run_cli(env, "submit", "trivial", "--shape", "N=1005", "--dtype", "float32", "--device-class",
                               "mi300x", "--trials", "4", "--json").stdout)["job"]
    broker = env["TUNER_BROKER_URL"]
    import redis

    redis.Redis.from_url(broker).delete("tune.cpu")  # the job's own message: only the forged ones remain
    with engine.connect() as c:
        keys = dict(c.execute(text("SELECT job_id, id FROM job_keys WHERE job_id IN (:a, :b)"), {"a": job, "b": other}).all())
        key_json = c.execute(text("SELECT key FROM job_keys WHERE job_id = :a"), {"a": job}).scalar()
        other_json = c.execute(text("SELECT key FROM job_keys WHERE job_id = :b"), {"b": other}).scalar()
    app = make_app(broker)
    # the job's own batch, but for 40 trials; and the other job's own batch, sent to the CPU queue
    forged = {"job_id": job, "job_key_id": keys[job], "key": key_json, "sampler": "auto", "seed": 0,
              "budget_trials": 40, "batch_trials": 3, "queue": "tune.cpu"}
    elsewhere = {**forged, "job_id": other, "job_key_id": keys[other], "key": other_json, "seed": None,
                 "budget_trials": 4, "queue": "tune.mi300x"}
    for payload in (forged, elsewhere):
        app.send_task("tuner.trial_batch", args=[payload], queue="tune.cpu")
    assert redis_llen(broker, "tune.cpu") == 2
    fleet["workers"](1)
    wait_for(lambda: fleet["logs"]().count("refused message") >= 2, 120, "both forged messages refused")
    logs = fleet["logs"]()
    assert f"disagrees with job {job} on budget_trials\n" in logs, logs
    assert f"job {other} is for device class mi300x" in logs, logs
    wait_done(engine, job)  # the janitor re-sends the job's own batch, built from its rows
    (key,) = key_audit(engine, job)
    assert 4 <= key["counted"] <= 5, key
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM tuning_trials WHERE job_id = :b"), {"b": other}).scalar() == 0
    assert run_cli(env, "cancel", other).returncode == 0


STORED_NOT_TOLD = """
import os, sys
import optuna
from db import store
from db.session import session_scope
from search.studies import storage
url, name = sys.argv[1:]
study = optuna.create_study(study_name=name, storage=storage(url, 1, 6))
trial = study.ask()
trial.suggest_categorical("P", [1, 2])
with session_scope(url) as s:
    dc, fp = store.store_identity(s, {"slug": "cpu-interpreter", "vendor": "cpu", "arch": "interpreter", "name": "cpu",
                                      "compute_units": 1, "memory_gb": 1},
                                  {"hash": "f" * 16, "driver": "none", "runtime": "none", "triton": "3.6.0", "torch": "2.13.0"})
    assert store.claim_config(s, study_name=name, config_hash="c", trial_number=trial.number, job_key_id=None,
                              worker_id=None)
with session_scope(url) as s:
    assert store.record_claimed_trial(s, kernel="trivial", key_hash="k" * 16, device_class_id=dc, fingerprint_id=fp,
                                      study_name=name, optuna_number=trial.number, config={"P": 1}, config_hash="c",
                                      status="ok", median_ms=0.5)
os._exit(9)  # killed between storing the trial and telling Optuna
"""


def test_a_trial_stored_but_not_told_is_told_by_the_janitor(fleet):
    """Item 1: storing a trial and telling Optuna are one step that anyone can finish: a process
    killed between the two leaves a RUNNING trial with a stored result, which a live worker's janitor
    tells Optuna (it used to stay RUNNING, disagreeing with tuning_trials, for ever)."""
    import subprocess
    import sys

    from tests.cli_helpers import ROOT

    fleet["workers"](1)
    proc = subprocess.run([sys.executable, "-c", STORED_NOT_TOLD, fleet["db_url"], "stored-not-told"], cwd=ROOT,
                          env=fleet["env"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr

    def trial():
        with fleet["engine"].connect() as c:
            return c.execute(text("SELECT t.state, v.value FROM trials t JOIN studies s ON s.study_id = t.study_id "
                                  "LEFT JOIN trial_values v ON v.trial_id = t.trial_id "
                                  "WHERE s.study_name = 'stored-not-told'")).one()

    wait_for(lambda: trial()[0] == "COMPLETE", 60, "the stored result told")
    assert trial()[1] == 0.5


def test_a_rerun_never_leaves_a_worse_current_best(fleet):
    """Item 4: a second `tuner tune` of a key whose leaders are all slower than the key's current
    best keeps that best: it is re-measured in the same rounds as the new leaders and replaced only
    when beaten beyond noise. The kernel is `slow` (a launch sleeps 1 + P*Q ms): the first tune
    stores P=Q=1, the fastest; the second, a random draw in a study of its own (timed over 2 input
    sets), measures only slower ones."""
    env = dict(fleet["env"], TUNER_STRATEGY_MODULES="tests.strategies.in_order")
    shape = ["slow", "--shape", "N=1", "--dtype", "float32", "--device", "cpu", "--json"]

    def tune(*args):
        proc = run_cli(env, "tune", *shape, *args)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["keys"][0]

    fastest = {"P": 1, "Q": 1, "num_warps": 1}
    assert tune("--sampler", "in_order", "--trials", "1")["config"] == fastest
    again = tune("--sampler", "random", "--seed", "13", "--trials", "3", "--rotate-buffers", "2")
    with fleet["engine"].connect() as c:
        measured = c.execute(text("SELECT t.config FROM tuning_trials t JOIN job_keys k ON k.id = t.job_key_id "
                                  "WHERE t.kernel = 'slow' AND k.key->'dims'->>'N' = '1' AND t.study_name LIKE '%+rot2' "
                                  "AND t.status = 'ok'")).scalars().all()
    assert measured and all(m["P"] * m["Q"] >= 2 for m in measured), measured  # each 50% slower or more
    best = json.loads(run_cli(env, "best", "slow", "--shape", "N=1", "--dtype", "float32", "--json").stdout)
    assert best[0]["config"] == fastest, (best, again)
    assert again["kept_current_best"] and again["config"] == fastest


def test_a_worker_started_during_a_database_outage_waits_and_then_serves_a_job(fleet):
    """Issue 31 item 9: a worker started while PostgreSQL refuses connections says it is waiting,
    stays up (it used to exit at once with status 2, so a fleet restarted in an outage crash-looped),
    and registers and runs a job once the database is back."""
    fleet["workers"](0)
    engine = fleet["engine"]
    engine.dispose()
    with database_outage(fleet["db_url"]):
        w = WorkerProc("outage", fleet["env"], fleet["home"])
        try:
            wait_for(lambda: "waiting: cannot use database" in w.text() or not w.alive(), 120,
                     "the worker to report the outage")
            assert w.alive(), w.text()[-2000:]
        except BaseException:
            w.stop()
            raise
    try:
        job = submit(fleet["env"], "trivial", 1010, 3, "--parallel", "1")
        wait_done(engine, job, timeout=240)
        assert "answered after" in w.text()
        wait_for(lambda: live(engine) == {"outage@test"}, 60, "the worker's heartbeat")
    finally:
        w.stop()


def test_a_bounded_wait_for_an_unreachable_database_is_one_line_exit_2(tmp_path):
    """`--wait-for-services 1` against a database that refuses connections: it says it waits, then
    gives up with one error line and exit 2, having written nothing."""
    import socket

    with socket.socket() as s:  # a port nothing listens on: bound, never listened
        s.bind(("127.0.0.1", 0))
        url = f"postgresql+psycopg://postgres@127.0.0.1:{s.getsockname()[1]}/nothing"
        env = service_env(tmp_path / "home", url, None)
        for args in (["worker", "--device", "cpu"], ["serve"]):
            proc = run_cli(env, *args, "--wait-for-services", "1", timeout=120)
            assert proc.returncode == 2, proc.stderr
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
            assert errors == [proc.stderr.strip().splitlines()[-1]], proc.stderr
            assert "gave up after 1 s (--wait-for-services)" in errors[0] and "cannot use database" in errors[0]
            assert "Traceback" not in proc.stderr and "waiting: cannot use database" in proc.stderr
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").iterdir())
