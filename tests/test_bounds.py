"""Bounded writes and least privilege (issue 31, items 5 and 8): miss counts saturate and a bad
record never breaks a later batch, the misses table is pruned and capped, a worker's metrics
listen on the loopback, and no error shows any piece of a password."""
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, text

from db import store
from db.clock import utcnow
from db.session import session_scope, upgrade
from tests.services import WorkerProc, pg_database, service_env
from tests.test_api import AUTH, make_client, miss


def row(n: int = 1, *, count: int = 1, age_days: float = 0.0, kernel: str = "matmul") -> dict:
    """A checked miss record (as parse_record returns it) of key number n, last seen age_days ago."""
    when = utcnow() - timedelta(days=age_days)
    return {"kernel": kernel, "kernel_version": "v", "key_hash": f"{n:016x}", "key": {"dims": {"N": n}},
            "dtype": "float16", "device_class": "h100-sxm-80gb", "fingerprint": "f" * 16, "level": "nearest",
            "count": count, "first_seen": when, "last_seen": when}


def counts(url) -> dict[str, int]:
    with session_scope(url) as s:
        return {m.key_hash: m.count for m in store.misses(s, include_tuned=True)}


@pytest.mark.integration
def test_a_refused_record_leaves_the_key_working_on_postgresql(tmp_path):
    """A count of 2**63-1 was stored, and every later batch of the key overflowed bigint: a 500,
    its other records lost. A 5,000-character kernel name was a 500 (varchar(100))."""
    with pg_database() as url:
        upgrade(url)
        api = make_client(tmp_path / "home", db_url=url)
        long_name = "k" * 5000
        for bad, says in ((miss(count=2**63 - 1), "count must be an integer from 1 to 1000000000"),
                          (miss(kernel=long_name, key={**miss()["key"], "kernel": long_name}), "unknown kernel"),
                          (miss(device_class="nvidia-x-1sm-1gb" + "x" * 100), "is not a device-class slug")):
            r = api.post("/v1/misses", json={"records": [miss(), bad]}, headers=AUTH)
            assert r.status_code == 400 and says in r.json()["error"], r.text
            assert len(r.json()["error"]) < 400, r.text  # ~80 characters of what was posted, at most
        assert api.get("/v1/runtime-misses").json() == []  # nothing of a refused batch is written
        for _ in range(2):
            r = api.post("/v1/misses", json={"records": [miss(count=10**9)]}, headers=AUTH)
            assert r.status_code == 200, r.text
        assert [m["count"] for m in api.get("/v1/runtime-misses").json()] == [2 * 10**9]


@pytest.mark.integration
def test_miss_sums_saturate_instead_of_overflowing(tmp_path):
    """Summed counts stop at MAX_MISS_COUNT, in a batch and in the database, so no write fails."""
    with pg_database() as url:
        upgrade(url)
        with session_scope(url) as s:
            store.record_misses(s, [row(count=2**63 - 1), row(count=2**63 - 1)])  # merged in the batch
        with session_scope(url) as s:
            store.record_misses(s, [row(count=5)])  # added in the database
        assert counts(url) == {f"{1:016x}": store.MAX_MISS_COUNT}
        assert store.MAX_MISS_COUNT < 2**63 - 10**9 * 500  # a full batch on a full row stays below int8's end


def test_old_miss_rows_are_pruned_by_the_janitor_once_an_hour(tmp_path):
    from workers.janitor import prune_misses

    url = f"sqlite:///{tmp_path}/t.db"
    upgrade(url)
    with session_scope(url) as s:
        store.record_misses(s, [row(1, age_days=31), row(2, age_days=29), row(3, age_days=-400)])
    assert prune_misses(url, keep_days=30) == 1
    assert sorted(counts(url)) == [f"{2:016x}", f"{3:016x}"]  # a row dated in the future is dated now
    with session_scope(url) as s:
        store.record_misses(s, [row(4, age_days=40)])
    assert prune_misses(url, keep_days=30) == 0  # pruned within the hour already: not again
    with session_scope(url) as s:
        s.execute(text("UPDATE tuner_locks SET expires_at = '2000-01-01 00:00:00.000000' WHERE name = 'prune-misses'"))
    assert prune_misses(url, keep_days=30) == 1
    with session_scope(url) as s:
        assert {m.last_seen for m in store.misses(s)} and max(m.last_seen for m in store.misses(s)) <= utcnow()


def test_the_misses_table_takes_no_new_key_past_its_row_cap(tmp_path):
    url = f"sqlite:///{tmp_path}/t.db"
    upgrade(url)
    with session_scope(url) as s:
        assert store.record_misses(s, [row(1), row(2), row(3)], max_rows=2) == 2
    with session_scope(url) as s:
        assert store.record_misses(s, [row(1, count=5), row(4)], max_rows=2) == 1  # the held key still counts
    assert counts(url) == {f"{1:016x}": 6, f"{2:016x}": 1}


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_a_launch_signature_fills_a_miss_row_written_without_one(tmp_path, db):
    """A drop-in key's row first written without a signature (another rank's imported record) kept
    its key JSON forever: `tuner tune --from-misses` could not rebuild its inputs and failed every
    trial. A signed record fills it in; a later unsigned one leaves it."""
    def keyed(sig):
        r = row(7)
        r["key"] = {**r["key"], **({"signature": sig} if sig else {})}
        return r

    def stored(url):
        with session_scope(url) as s:
            (m,) = store.misses(s, include_tuned=True)
            return m.key.get("signature"), m.count

    def run(url):
        upgrade(url)
        for sig, want in ((None, (None, 1)), ({"args": {"n": 1}}, ({"args": {"n": 1}}, 2)),
                          (None, ({"args": {"n": 1}}, 3)), ({"args": {"n": 2}}, ({"args": {"n": 2}}, 4))):
            with session_scope(url) as s:
                store.record_misses(s, [keyed(sig)])
            assert stored(url) == want
        with session_scope(url) as s:  # merged in one batch: the signed record's key is kept
            store.record_misses(s, [keyed({"args": {"n": 3}}), keyed(None)])
        assert stored(url) == ({"args": {"n": 3}}, 6)

    if db == "sqlite":
        run(f"sqlite:///{tmp_path}/t.db")
    else:
        with pg_database() as url:
            run(url)


@pytest.mark.integration
def test_a_worker_s_metrics_listen_on_the_loopback_only(tmp_path):
    """TUNER_METRICS_PORT bound every interface; now TUNER_METRICS_HOST, 127.0.0.1 by default."""
    import socket

    from tests.test_api import free_port
    from tests.test_service import wait_for

    port = free_port()
    env = service_env(tmp_path / "home", None, None, TUNER_METRICS_PORT=str(port))
    w = WorkerProc("metrics", env, tmp_path)
    try:
        def listening() -> set[str]:
            # /proc/net/tcp: local address as hex IP:port; state 0A is LISTEN
            out = set()
            for line in open("/proc/net/tcp").read().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                ip, _, hexport = local.partition(":")
                if state == "0A" and int(hexport, 16) == port:
                    out.add(socket.inet_ntoa(bytes.fromhex(ip)[::-1]))
            return out
        wait_for(lambda: listening(), 120, "the worker's metrics port")
        assert listening() == {"127.0.0.1"}, (listening(), w.text()[-2000:])
    finally:
        w.stop()


def test_an_unparsable_database_url_shows_no_piece_of_its_password():
    """libpq was handed the tail of a password holding '@' as the host, and its error showed it:
    failed to resolve host 'Secret@127.0.0.1'."""
    from db.session import DatabaseError, check_reachable

    with pytest.raises(DatabaseError) as err:
        check_reachable("postgresql+psycopg://tuner:Top@Secret@127.0.0.1:5432/test")
    message = str(err.value)
    assert "Secret" not in message and "Top" not in message and "tuner:***@127.0.0.1" in message, message


def test_the_runtime_redacts_with_the_same_function():
    """Two redactions disagreed (the runtime's kept what urllib could not parse); one is left."""
    from tuner.runtime.miss_tally import HttpSink
    from tuner.runtime.sources import DatabaseSource

    secret = "pw1@ss2"
    for shown in (HttpSink(f"http://me:{secret}@host:8000", "").describe(),
                  DatabaseSource(f"postgresql+psycopg://me:{secret}@db/tuner").describe()):
        assert "pw1" not in shown and "ss2" not in shown and "me:***@" in shown, shown


@pytest.mark.integration
def test_a_database_error_in_a_miss_write_is_a_400_not_a_500(tmp_path):
    """A value past what a column holds, refused by the database itself, is the caller's error."""
    with pg_database() as url:
        upgrade(url)
        engine = create_engine(url)
        with engine.begin() as c:  # a column narrower than what the checks let through
            c.execute(text("ALTER TABLE runtime_misses ALTER COLUMN dtype TYPE varchar(4)"))
        engine.dispose()
        api = make_client(tmp_path / "home", db_url=url)
        r = api.post("/v1/misses", json={"records": [miss()]}, headers=AUTH)
        assert r.status_code == 400 and "the database refused a miss record" in r.json()["error"], r.text
