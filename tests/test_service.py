"""The distributed service against the real Redis, PostgreSQL and `tuner worker` processes.

No fakes, no eager mode: jobs go through Celery over Redis to worker processes that run the
trivial registered kernel (tests/kernels/trivial.py) in the Triton interpreter.
"""
import json
import os
import threading
import time

import pytest
from sqlalchemy import create_engine, text

from tests.services import (
    WorkerProc,
    dropped_results,
    key_audit,
    pg_database,
    redis_llen,
    redis_url,
    restart_redis,
    run_cli,
    service_env,
    wait_for,
)

pytestmark = pytest.mark.integration
SHAPE = ["--shape", "N=16", "--dtype", "float32"]
SECRET = "s3cret-pw"


tuner = run_cli


def submit(env, *extra, trials=12, seed=0):
    proc = tuner(env, "submit", "trivial", *SHAPE, "--device-class", "cpu", "--trials", str(trials),
                 "--seed", str(seed), "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["job"]


def status(env, job):
    proc = tuner(env, "status", job, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wait_state(env, job, states=("done", "failed", "cancelled"), timeout=240):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = status(env, job)
        if st["state"] in states:
            return st
        time.sleep(1)
    raise AssertionError(f"job {job} still {st['state']} after {timeout}s: {st}")




@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("svc")
    with pg_database() as db_url:
        # trust auth accepts any password: one in the URL proves it never reaches logs or output
        db_url = db_url.replace("postgres@", f"postgres:{SECRET}@")
        env = service_env(home, db_url, redis_url())
        assert tuner(env, "db", "upgrade").returncode == 0
        engine = create_engine(db_url)
        workers: list[WorkerProc] = []

        def start(name):
            w = WorkerProc(name, env, home)
            workers.append(w)
            return w

        def live_names():
            with engine.connect() as c:
                return {r[0] for r in c.execute(text(
                    "select name from workers where stopped_at is null and heartbeat_at > now() - interval '5 seconds'"))}

        def ensure(n):
            alive = [w for w in workers if w.alive()]
            for i in range(n - len(alive)):
                start(f"w{len(workers) + 1}")
            alive = [w for w in workers if w.alive()][:n]
            wait_for(lambda: {f"{w.name}@test" for w in alive} <= live_names(), 180, "workers to register")
            return alive

        yield {"env": env, "engine": engine, "ensure": ensure, "home": home, "workers": workers}
        for w in workers:
            w.stop()
        engine.dispose()


def counts(engine, job):
    with engine.connect() as c:
        return c.execute(text("select count(*) from tuning_trials where job_id=:j and status != 'invalid'"),
                         {"j": job}).scalar()


def assert_sound(engine, job, budget, in_flight=2):
    """The invariants of a finished job's (single) key: trials within [budget, budget + trials in
    flight], no configuration measured twice, finalized once, one current best (this job's or an
    earlier job's that it did not beat), and no Optuna trial of its study left RUNNING."""
    wait_for(lambda: key_audit(engine, job)[0]["running"] == 0, 60, "no trial left RUNNING")
    (key,) = key_audit(engine, job)
    assert budget <= key["counted"] <= budget + in_flight, key
    assert key["duplicated"] == 0 and key["finalize_attempts"] == 1 and key["current_bests"] == 1, key
    return key


def test_workers_cooperate_on_one_study(stack):
    stack["ensure"](2)
    logs = lambda: "".join(w.text() for w in stack["workers"])  # noqa: E731
    dropped = dropped_results(logs())
    job = submit(stack["env"], "--parallel", "2", trials=18)
    st = wait_state(stack["env"], job)
    assert st["state"] == "done", st
    (key,) = st["keys"]
    assert 18 <= key["trials_done"] <= 18 + 3
    assert len(key["workers"]) == 2, key["workers"]
    assert_sound(stack["engine"], job, 18)
    assert dropped_results(logs()) == dropped  # no configuration measured twice



def test_a_job_s_measurement_options_reach_the_worker_s_trials(stack):
    stack["ensure"](1)
    job = submit(stack["env"], "--rotate-buffers", "3", "--max-cv", "1.0", trials=4)
    st = wait_state(stack["env"], job)
    assert st["state"] == "done" and st["measurement"] == {"rotate_buffers": 3, "cuda_graph": False, "max_cv": 1.0}
    with stack["engine"].connect() as c:
        rows = c.execute(text("select study_name, message from tuning_trials where job_id = :j and status = 'ok'"),
                         {"j": job}).all()
    assert rows and all(name.endswith("+rot3") and "timed over 3 rotating input sets" in message
                        for name, message in rows), rows


def test_a_key_is_measured_by_one_stack_while_two_are_live(stack):
    """A rolling driver update: workers of two stacks serve one class. The first to take a key
    names its study; the other stack's workers hand its batches back instead of splitting the
    trials over two studies, of which the finalizer would read only its own."""
    stack["ensure"](1)
    env = dict(stack["env"], TUNER_FINGERPRINT_OVERRIDE="driver=rolling-update")
    other = WorkerProc("other-stack", env, stack["home"])
    try:
        def registered():
            with stack["engine"].connect() as c:
                return c.execute(text("select count(*) from workers where name = 'other-stack@test' and "
                                      "heartbeat_at > now() - interval '5 seconds'")).scalar() == 1

        wait_for(registered, 180, "the other stack's worker")
        job = submit(stack["env"], "--parallel", "2", trials=9)
        assert wait_state(stack["env"], job)["state"] == "done"
        with stack["engine"].connect() as c:
            studies = c.execute(text("select distinct study_name from tuning_trials where job_id = :j"),
                                {"j": job}).scalars().all()
            fingerprints = c.execute(text("select count(distinct fingerprint_id) from tuning_trials "
                                          "where job_id = :j"), {"j": job}).scalar()
        assert len(studies) == 1 and fingerprints == 1, studies
        assert_sound(stack["engine"], job, 9)
    finally:
        other.stop()

def trial_workers(engine, job):
    with engine.connect() as c:
        return c.execute(text("select w.name, count(*) from tuning_trials t join workers w on w.id = t.worker_id "
                              "where t.job_id = :j and t.status != 'invalid' group by w.name"), {"j": job}).all()


@pytest.mark.slow
def test_sigkill_mid_job_completes_on_the_other_worker(stack):
    w1, w2 = stack["ensure"](2)
    job = submit(stack["env"], "--parallel", "2", trials=120, seed=3)
    # poll the database directly: a `tuner status` subprocess is too slow to catch the job mid-way
    wait_for(lambda: counts(stack["engine"], job) >= 6, 120, "trials to start")
    busy = {name for name, _ in trial_workers(stack["engine"], job)}
    victim = next(w for w in (w1, w2) if f"{w.name}@test" in busy)
    victim.kill()
    assert counts(stack["engine"], job) < 120, "the job ended before the kill: make it longer"
    st = wait_state(stack["env"], job, timeout=300)
    assert st["state"] == "done", st
    # the victim's trial in flight is failed (not left RUNNING) and the budget holds
    assert_sound(stack["engine"], job, 120)
    assert f"{victim.name}@test" not in st["live_workers"]


@pytest.mark.slow
def test_redis_restart_mid_job(stack):
    """This Redis keeps nothing on disk: the restart loses the queued batch and those in flight are
    acknowledged into nothing. The job still ends with its budget spent once, finalized once."""
    stack["ensure"](2)
    job = submit(stack["env"], "--parallel", "2", trials=100, seed=5)
    wait_for(lambda: counts(stack["engine"], job) >= 4, 120, "trials to start")
    restart_redis()
    assert counts(stack["engine"], job) < 100, "the job ended before the restart: make it longer"
    st = wait_state(stack["env"], job, timeout=300)
    assert st["state"] == "done", st
    assert_sound(stack["engine"], job, 100)
    assert all(w.alive() for w in stack["workers"][-2:])


def test_job_for_a_class_without_workers_stays_queued(stack):
    stack["ensure"](1)
    proc = tuner(stack["env"], "submit", "trivial", *SHAPE, "--device-class", "mi300x", "--trials", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)["job"]

    def beats_since_submit():
        with stack["engine"].connect() as c:
            return c.execute(text("select min(heartbeat_at) > j.created_at + interval '2 seconds' from workers w, "
                                  "jobs j where j.id = :j and w.stopped_at is null and w.heartbeat_at > now() - "
                                  "interval '4 seconds' group by j.created_at"), {"j": job}).scalar()

    # every live CPU worker has beaten (and run its janitor) since: none took the message
    wait_for(beats_since_submit, 60, "the live workers' next heartbeats")
    # both batches it was sent as (2 in parallel, 4 trials in batches of 3) wait in its class's queue
    assert redis_llen(stack["env"]["TUNER_BROKER_URL"], "tune.mi300x") == 2
    st = status(stack["env"], job)
    assert st["state"] == "queued"
    assert "no worker of class mi300x is alive" in st["note"]
    human = tuner(stack["env"], "status", job)
    assert "no worker of class mi300x is alive" in human.stderr
    assert tuner(stack["env"], "cancel", job).returncode == 0
    assert status(stack["env"], job)["state"] == "cancelled"


def test_malformed_and_unknown_kernel_messages_are_rejected(stack):
    (w1, *_) = stack["ensure"](1)
    from workers.app import make_app

    app = make_app(stack["env"]["TUNER_BROKER_URL"])
    good = {"job_id": "0" * 32, "job_key_id": 1, "key": {"kernel": "nosuch", "version": "x", "dims": {"N": 1},
                                                           "dtype": "float32"},
            "sampler": "tpe", "seed": None, "budget_trials": 1, "batch_trials": 1, "queue": "tune.cpu"}
    for payload in ({"hello": "world"}, "not an object", good):
        app.send_task("tuner.trial_batch", args=[payload], queue="tune.cpu")
    alive = [w for w in stack["workers"] if w.alive()]  # any live worker may take them
    logs = lambda: "".join(w.text() for w in alive)  # noqa: E731
    wait_for(lambda: logs().count("rejected message") >= 3, 60, "three rejections in the worker logs")
    assert "unknown kernel 'nosuch'" in logs()
    assert all(w.alive() for w in alive)
    job = submit(stack["env"], trials=3, seed=9)
    assert wait_state(stack["env"], job)["state"] == "done"


@pytest.mark.slow
def test_two_coordinators_four_workers(stack):
    stack["ensure"](4)
    ids: list[str] = []
    lock = threading.Lock()

    def coordinator(offset):
        for i in range(4):
            job = submit(stack["env"], trials=6, seed=100 + offset + i)
            with lock:
                ids.append(job)

    threads = [threading.Thread(target=coordinator, args=(n * 10,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == len(set(ids)) == 8
    for job in ids:
        assert wait_state(stack["env"], job)["state"] == "done"
    with stack["engine"].connect() as c:
        found = {r[0] for r in c.execute(text("select id from jobs where id = any(:ids)"), {"ids": ids})}
    assert found == set(ids)
    for job in ids:
        assert_sound(stack["engine"], job, 6, in_flight=4)


@pytest.mark.slow
def test_embedded_default_sqlite_broker_and_database(tmp_path):
    env = service_env(tmp_path / "home", None, None)
    w = WorkerProc("embedded", env, tmp_path)
    try:
        job = submit(env, trials=4, seed=1)
        st = wait_state(env, job, timeout=240)
        assert st["state"] == "done", (st, w.text()[-3000:])
        assert (tmp_path / "home" / "tuner.db").exists() and (tmp_path / "home" / "broker.db").exists()
    finally:
        w.stop()


@pytest.mark.slow
def test_a_submit_waits_for_a_sqlite_broker_that_is_locked(tmp_path):
    """A worker's poll holds the broker file's write lock; on a loaded machine a sender's first
    write (kombu creates its tables then) waited past SQLite's 5 s default, and kombu's retry
    failed with "'NoneType' object has no attribute 'client'" (seen once in CI)."""
    import sqlite3

    env = service_env(tmp_path / "home", None, None)
    (tmp_path / "home").mkdir()
    lock = sqlite3.connect(tmp_path / "home" / "broker.db", timeout=0, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(10.0, lock.rollback)  # the CLI starts in 2-3 s, then waits more than 5
    release.start()
    try:
        job = submit(env, trials=4, seed=1)
    finally:
        release.join()
        lock.close()
    assert status(env, job)["state"] == "queued"


@pytest.mark.slow
def test_credentials_never_reach_logs_or_output(stack):
    stack["ensure"](1)
    job = submit(stack["env"], trials=3, seed=11)
    wait_state(stack["env"], job)
    outputs = [tuner(stack["env"], *args).stdout + tuner(stack["env"], *args).stderr
               for args in (["status", job], ["status", job, "--json"], ["jobs"], ["jobs", "--json"])]
    logs = "".join(w.text() for w in stack["workers"])
    assert logs and all(out for out in outputs)
    assert SECRET not in logs and not any(SECRET in out for out in outputs)


def children_running(pid: int, module: str) -> list[int]:
    """Processes whose parent is pid and whose command line runs `python -m module`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if ppid == pid and module.encode() in argv:
            found.append(int(entry))
    return found


def test_an_idle_worker_has_its_benchmark_process_up(tmp_path):
    """Started before the worker takes its first message, so no job waits on its startup."""
    env = service_env(tmp_path / "home", None, None)
    w = WorkerProc("idle", env, tmp_path)
    try:
        wait_for(lambda: children_running(w.proc.pid, "harness.benchmark"), 120,
                 "the idle worker's benchmark process")
        assert w.alive()
    finally:
        w.stop()


def test_waiting_for_a_service_says_so_once_then_every_minute_and_gives_up_at_its_limit():
    """workers.faults.wait_for_service on a simulated clock: a transient fault is waited out with
    back-off (1, 2, 4 ... 30 s pauses), reported once and then once a minute; a fault that waiting
    cannot cure comes through at once; a limit ends the wait with StillDown naming the reason."""
    from workers.faults import StillDown, wait_for_service

    class Down(Exception):
        transient = True

    now, said = [0.0], []

    def sleep(s):
        now[0] += s

    def down_until(t):
        def check():
            if now[0] < t:
                raise Down("cannot use database x: refused")
            return "up"
        return check

    assert wait_for_service(down_until(200), None, said.append, clock=lambda: now[0], sleep=sleep) == "up"
    assert said[0].startswith("waiting: cannot use database x: refused; trying again with back-off until it answers")
    # tries at 0, 1, 3, 7, 15, 31, 61, 91, 121, 151, 181, 211 s: reported at 0, then the first try a minute on
    assert [line.split(":")[0] for line in said[1:-1]] == ["still waiting after 61 s", "still waiting after 121 s",
                                                          "still waiting after 181 s"]
    assert said[-1].startswith("answered after") and 200 <= now[0] <= 230
    now[0], said = 0.0, []
    with pytest.raises(StillDown, match=r"gave up after 5 s \(--wait-for-services\): cannot use database x"):
        wait_for_service(down_until(10**6), 5, said.append, clock=lambda: now[0], sleep=sleep)
    assert now[0] == 5 and len(said) == 1

    def wrong_password():
        raise ValueError("cannot use database x: password authentication failed")

    with pytest.raises(ValueError):
        wait_for_service(wrong_password, None, said.append, clock=lambda: now[0], sleep=sleep)


def test_a_workers_timings_and_batch_size_come_from_the_settings_alone():
    """WorkerConfig had defaults of its own (a stall of 60 s where the settings say 120): a worker
    built without the settings disagreed with one built from them. Now it has none."""
    from tuner import settings as settings_mod
    from tuner.worker_process import worker_config
    from workers.service import WorkerConfig

    with pytest.raises(TypeError):
        WorkerConfig(db_url="sqlite://", device="cpu", name="w")
    settings = settings_mod.from_env({"TUNER_STALL_S": "77", "TUNER_BATCH_TRIALS": "3"})
    cfg = worker_config(settings, "sqlite://", "cpu", "w")
    assert (cfg.stall_s, cfg.batch_trials, cfg.heartbeat_s) == (77.0, 3, settings.heartbeat_s)
