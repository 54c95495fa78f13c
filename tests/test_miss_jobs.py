"""workers/miss_jobs.py in one process on a SQLite file (fast): which missed keys become jobs,
with which rows and messages, and why the others are skipped. Written against the survivors of
bench/mutation.py: each assertion holds a behaviour a mutant changed while every test passed."""
from datetime import datetime, timedelta, timezone

from db import lifecycle, models, store
from db.session import session_scope
from search_spaces import registry
from tests import rows
from workers.batch import BatchMessage
from workers.miss_jobs import LOCK, MissedKey, enqueue_misses, missed_keys

H100, MI300 = "h100-sxm-80gb", "a100-sxm-80gb"


def _key(n, kernel="tiles"):
    return registry.get(kernel).make_key({"N": n} if kernel == "tiles" else {"M": n, "N": n, "K": n}, "float32")


def _miss(n, count, level="nearest", device_class=H100, kernel="tiles"):
    key, now = _key(n, kernel), datetime.now(timezone.utc)
    return {"kernel": kernel, "kernel_version": key.version, "key_hash": key.stable_hash, "key": key.to_json(),
            "dtype": "float32", "device_class": device_class, "fingerprint": "f" * 16, "level": level,
            "count": count, "first_seen": now, "last_seen": now}


def _db(tmp_path, misses, *, workers=(H100,)):
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    for slug in workers:
        rows.live_worker(url, f"w-{slug}", slug)
    with session_scope(url) as s:
        store.record_misses(s, misses)
    return url


def _run(url, sent, **kw):
    return enqueue_misses(url, sent.append, holder="test", dead_after_s=60,
                          **{"trials": 6, "top": 10, "parallel": 2, "batch_trials": 4, **kw})


def test_missed_keys_sums_counts_and_levels_per_key_and_filters_by_kernel_class_and_count(tmp_path):
    """Counts and levels summed per key and class, most frequent first; a class the predicate
    refuses is passed over (the most frequent row here, so every row after it is still read);
    the default minimum is one miss, and a key with exactly the minimum is kept."""
    url = _db(tmp_path, [_miss(10, 3, "nearest"), _miss(10, 2, "default"), _miss(20, 1), _miss(30, 50, device_class=MI300),
                         _miss(64, 40, kernel="matmul")])
    want10 = MissedKey("tiles", _key(10).version, _key(10).stable_hash, _key(10).to_json(), H100, 5, ("default", "nearest"))
    want20 = MissedKey("tiles", _key(20).version, _key(20).stable_hash, _key(20).to_json(), H100, 1, ("nearest",))
    with session_scope(url) as s:
        assert missed_keys(s, kernel="tiles", device_class=lambda c: c != MI300) == [want10, want20]
        assert missed_keys(s, kernel="tiles", device_class=lambda c: c != MI300, min_count=5) == [want10]
        assert [(mk.kernel, mk.count) for mk in missed_keys(s)] == [("tiles", 50), ("matmul", 40), ("tiles", 5),
                                                                    ("tiles", 1)]
    assert want10.to_json() == {"kernel": "tiles", "device_class": H100, "key": {"N": 10}, "dtype": "float32",
                                "count": 5, "levels": ["default", "nearest"]}


def test_queued_jobs_carry_the_defaults_their_rows_and_messages_say(tmp_path):
    """With the defaults (every key with a miss, two messages per key, batches of 4 trials), each
    key gets a job row, a request and messages that say the same; the lease is held while the
    messages are sent, for 300 s; the run's id is 12 hex digits and is in every request."""
    url = _db(tmp_path, [_miss(10, 9), _miss(20, 1)])
    sent, leases = [], []

    def send(msg):
        sent.append(msg)
        with session_scope(url) as s:
            lock = s.get(models.Lock, LOCK)
            expires = lock.expires_at if lock.expires_at.tzinfo else lock.expires_at.replace(tzinfo=timezone.utc)
            leases.append((lock.holder, expires - datetime.now(timezone.utc)))

    out = enqueue_misses(url, send, holder="test", dead_after_s=60, trials=12, top=10, parallel=2, batch_trials=4)
    assert set(out) == {"run", "locked_by_other", "dry_run", "jobs", "skipped"}
    assert (out["locked_by_other"], out["dry_run"], out["skipped"]) == (False, False, [])
    assert len(out["run"]) == 12 and int(out["run"], 16) >= 0
    assert [(j["key"], j["count"]) for j in out["jobs"]] == [({"N": 10}, 9), ({"N": 20}, 1)]
    want = []
    with session_scope(url) as s:
        for plan, n in zip(out["jobs"], (10, 20)):
            job = s.get(models.Job, plan["job"])
            (key_row,) = s.query(models.JobKey).filter_by(job_id=job.id).all()
            assert (job.kind, job.origin, job.state, job.kernel, job.kernel_version, job.sampler, job.seed,
                    job.budget_trials, job.device_selector) == \
                ("miss", "queued", "queued", "tiles", _key(n).version, "auto", 0, 12, H100)
            assert (key_row.key, key_row.key_hash) == (_key(n).to_json(), _key(n).stable_hash)
            assert {k: v for k, v in job.request.items() if k != "measurement"} == {
                "kernel": "tiles", "keys": [_key(n).to_json()], "trials": 12, "sampler": "auto", "seed": 0,
                "batch_trials": 4, "misses": {"count": plan["count"], "levels": ["nearest"], "run": out["run"]}}
            assert set(job.request["measurement"]) and isinstance(job.request["measurement"], dict)
            want += [BatchMessage(job_id=job.id, job_key_id=key_row.id, key=_key(n).to_json(), sampler="auto", seed=0,
                                  budget_trials=12, batch_trials=4, queue=f"tune.{H100}")] * 2
    assert sent == want  # 12 trials in batches of 4: three batches, two messages per key at once
    assert all(holder == "test" and timedelta(seconds=200) < left <= timedelta(seconds=300) for holder, left in leases)
    with session_scope(url) as s:
        assert s.get(models.Lock, LOCK) is None  # released after the run


def test_open_jobs_block_only_their_own_key_on_their_own_class(tmp_path):
    """A queued or running job of the key on the class skips it; a job of the key on another class,
    or of another key on the class, does not; a key tuned under the live workers' stack is skipped."""
    url = _db(tmp_path, [_miss(10, 9), _miss(20, 8), _miss(30, 7), _miss(40, 6), _miss(50, 5)],
              workers=(H100, MI300))
    with session_scope(url) as s:
        for n, selector, state in ((10, H100, "running"), (20, H100, "queued"), (30, MI300, "queued"),
                                   (99, H100, "running")):
            lifecycle.create_job(s, kind="miss", origin="queued", kernel="tiles", kernel_version=_key(n).version,
                             keys=[_key(n).to_json()], key_hashes=[_key(n).stable_hash], sampler="auto", seed=0,
                             budget_trials=6, request={}, device_selector=selector, state=state)
    rows.best(url, H100, {"N": 40}, 1.0, kernel="tiles", dtype="float32", config={"BLOCK": 32, "num_warps": 4})
    out = _run(url, [])
    assert [j["key"]["N"] for j in out["jobs"]] == [30, 50]
    assert {j["key"]["N"]: j["reason"] for j in out["skipped"]} == {
        10: "a job for it is already queued or running", 20: "a job for it is already queued or running",
        40: "tuned under a stack live workers run (the runtime's stack differs: see `tuner retune --stale-only`)"}


def test_top_per_class_and_the_cap_on_jobs_skip_the_least_frequent(tmp_path):
    url = _db(tmp_path, [_miss(10, 9), _miss(20, 8), _miss(30, 7)])
    out = _run(url, [], top=1, dry_run=True)
    assert [j["key"]["N"] for j in out["jobs"]] == [10]
    assert [(j["key"]["N"], j["reason"]) for j in out["skipped"]] == [(20, "beyond the top 1 of its class"),
                                                                     (30, "beyond the top 1 of its class")]
    out = _run(url, [], max_jobs=2, dry_run=True)
    assert [j["key"]["N"] for j in out["jobs"]] == [10, 20]
    assert [(j["key"]["N"], j["reason"]) for j in out["skipped"]] == [(30, "beyond the cap of 2 job(s)")]


def test_kernel_and_class_filters_leave_other_misses_out_of_the_plan(tmp_path):
    """Misses of another kernel, or of a class the selector refuses, are neither planned nor
    skipped (a refused class without workers would otherwise be listed as skipped)."""
    url = _db(tmp_path, [_miss(10, 9), _miss(64, 20, kernel="matmul"), _miss(30, 7, device_class=MI300)])
    out = _run(url, [], kernel="tiles", device_class=lambda c: c == H100, dry_run=True)
    assert ([j["key"] for j in out["jobs"]], out["skipped"]) == ([{"N": 10}], [])


def test_a_run_that_finds_the_lease_taken_says_so_and_queues_nothing(tmp_path):
    url = _db(tmp_path, [_miss(10, 9)])
    with session_scope(url) as s:
        assert store.acquire_lock(s, LOCK, "someone else", ttl_s=300)
    sent = []
    out = _run(url, sent)
    assert out == {"run": out["run"], "locked_by_other": True, "dry_run": False, "jobs": [], "skipped": []}
    assert len(out["run"]) == 12 and sent == []


def test_a_key_no_worker_of_its_class_could_hold_is_skipped_with_the_memory_it_needs(tmp_path):
    """The check of `tuner submit` (devices/fit.py): a GPU class by its memory, the CPU class by
    this host's."""
    cpu = "cpu-interpreter"
    url = _db(tmp_path, [_miss(200000, 9, kernel="matmul"), _miss(200000, 8, device_class=cpu, kernel="matmul")],
              workers=(H100, cpu))
    out = _run(url, [], dry_run=True)
    why = {j["device_class"]: j["reason"] for j in out["skipped"]}
    assert out["jobs"] == [] and sorted(why) == [cpu, H100]
    assert why[H100].startswith("matmul M=200000,N=200000,K=200000 float32 needs about ")
    assert why[H100].endswith(" GiB of device class h100-sxm-80gb; tune a smaller shape")
    assert why[cpu].endswith(" GiB of this host; tune a smaller shape")
