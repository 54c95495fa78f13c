"""The HTTP API (tuner/api/) against a real database and broker: the same bad inputs as the CLI,
jobs, the bundle's ETag and other reads, /metrics, and `tuner serve` itself (access rules:
tests/test_api_access.py; runtime misses: tests/test_api_misses.py).

The app runs in-process through Starlette's TestClient (httpx over ASGI, with the client address
set to the loopback or another host, and the Host header of the loopback); `tuner serve` runs as a
real uvicorn process.
"""
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import warnings

import pytest

from tests import rows
from tests.cli_helpers import ROOT, tuner_env
from tests.test_cli_errors import CASES
from tuner import settings as settings_mod

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette suggests httpx2; httpx is what it drives today
    from fastapi.testclient import TestClient

TOKEN = "t0ken-for-tests"
RUNTIME_TOKEN = "runtime-t0ken-for-tests"
AUTH = {"authorization": f"Bearer {TOKEN}"}
RUNTIME = {"authorization": f"Bearer {RUNTIME_TOKEN}"}
LOCAL, REMOTE = ("127.0.0.1", 40000), ("192.0.2.7", 40000)  # 192.0.2.0/24: documentation addresses
BASE = "http://localhost:8000"  # the Host header a browser on this machine sends
SAME_ORIGIN = {"origin": BASE}  # what a browser adds to a form posted from one of the server's pages


def make_client(home, client=LOCAL, token=TOKEN, db_url=None, auth=True, host="127.0.0.1", **env):
    """A client of the app; `auth`: every request sends the operators' token unless it says otherwise."""
    from tuner.api.app import create_app

    # every scrape reads the database: these tests change rows between two scrapes
    values = {"TUNER_HOME": str(home), "TUNER_API_TOKEN": token, "TUNER_RUNTIME_TOKEN": RUNTIME_TOKEN,
              "TUNER_METRICS_CACHE_S": "0", **env}
    if db_url:
        values["TUNER_DB_URL"] = db_url
    return TestClient(create_app(settings_mod.from_env(values), host), client=client, base_url=BASE,
                      headers=AUTH if auth and token else None, raise_server_exceptions=False)


@pytest.fixture
def api(tmp_path):
    """An app on the embedded SQLite database and broker in a fresh TUNER_HOME, created by the
    first write (as `tuner submit` creates them)."""
    return make_client(tmp_path / "home")


def jobs_written(home) -> int:
    db = home / "tuner.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from jobs").fetchone()[0]



MISS_DIMS = {"M": 16, "N": 4096, "K": 4096}
MISS_FP = rows.stack("555.1")["hash"]  # the stack tests.rows gives a class with driver 555.1


def miss(**change) -> dict:
    """A record as the runtime makes it (tuner.runtime.miss_tally.record), as JSON."""
    from search_spaces import registry
    from tuner.runtime.miss_tally import MissKey, record

    key = registry.get("matmul").make_key(MISS_DIMS, "float16")
    made = record(MissKey("matmul", key.version, key.stable_hash, key.dims, "float16", "h100-sxm-80gb", MISS_FP,
                          "nearest"), 3, "2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00")
    return {**made, **change}


# ---- the CLI's table of bad inputs, held against POST /v1/jobs ------------------------------

# where the API's answer differs from the CLI's: the HTTP status and what the one line says
API_EXPECT = {
    "unknown device": (422, "unknown device class 'tpu'"),  # a job names a class, not a local device
    "non-integer trials": (422, "trials: Input should be a valid integer"),
    "unknown option": (422, "bogus: Extra inputs are not permitted"),
    "unknown command": (404, "no such path /v1/tunes"),
}
# the CLI refuses a trial bigger than this host for `tuner tune`; a queued job runs on a worker's
# host, which the API (like `tuner submit`) cannot see
NOT_FOR_API = {"trial too big for the host"}


def api_request(args: list[str]) -> tuple[str, dict]:
    """The POST /v1/jobs (path, body) that says what the CLI arguments say."""
    cmd, rest = args[0], args[1:]
    if cmd not in ("tune", "submit"):
        return f"/v1/{cmd}", {}
    body: dict = {"device_class": "cpu"}
    if rest and not rest[0].startswith("-"):
        body["kernel"], rest = rest[0], rest[1:]
    names = {"--shape": "shapes", "--dtype": "dtypes", "--trials": "trials", "--sampler": "sampler",
             "--device": "device_class", "--device-class": "device_class", "--rotate-buffers": "rotate_buffers",
             "--max-cv": "max_cv", "--parallel": "parallel"}
    i = 0
    while i < len(rest):
        opt = rest[i]
        if opt == "--cuda-graph":
            body["cuda_graph"], i = True, i + 1
        elif opt in ("--shape", "--dtype"):
            body.setdefault(names[opt], []).append(rest[i + 1])
            i += 2
        elif opt in names:
            value = rest[i + 1]
            body[names[opt]] = int(value) if re.fullmatch(r"-?\d+", value) else (
                float(value) if re.fullmatch(r"-?\d*\.\d+", value) else value)
            i += 2
        else:
            body[opt.lstrip("-")], i = True, i + 1
    return "/v1/jobs", body


# the cases of the CLI's table that the API has an endpoint for: a job's submission, and a path
# that names no endpoint (the CLI's lookup and misses verbs are read commands of the CLI only)
API_CASES = sorted(c for c in CASES if c not in NOT_FOR_API and (CASES[c][0][0] in ("tune", "submit")
                                                                 or c == "unknown command"))


@pytest.mark.parametrize("case", API_CASES)
def test_the_cli_s_bad_inputs_get_one_json_line_from_the_api_and_write_nothing(case, tmp_path):
    api = make_client(tmp_path / "home")
    path, body = api_request(CASES[case][0])
    status, expected = API_EXPECT.get(case, (422, CASES[case][1]))  # a request no job may hold
    r = api.post(path, json=body, headers=AUTH)
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert expected in error and "\n" not in error and "Traceback" not in error, error
    assert jobs_written(tmp_path / "home") == 0


def test_bad_inputs_leave_no_job_and_no_message(tmp_path):
    """All of them against one existing database and broker: no job row, nothing queued."""
    home = tmp_path / "home"
    api = make_client(home)
    good = api.post("/v1/jobs", json={"kernel": "trivial", "shapes": ["N=16"], "device_class": "cpu", "trials": 8},
                    headers=AUTH)
    assert good.status_code == 201, good.text
    for case in API_CASES:
        path, body = api_request(CASES[case][0])
        assert api.post(path, json=body, headers=AUTH).status_code in (400, 404, 422)
    assert jobs_written(home) == 1
    metrics = api.get("/metrics").text
    assert 'tuner_queue_depth{queue="tune.cpu"} 2.0' in metrics  # the good job's two batches only


def test_a_ten_megabyte_body_is_refused_before_it_is_read(api, tmp_path):
    big = b'{"kernel": "' + b"x" * (10 << 20) + b'"}'
    r = api.post("/v1/jobs", content=big, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(100):
            yield b"x" * 100_000

    r = api.post("/v1/jobs", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    assert jobs_written(tmp_path / "home") == 0


def test_malformed_json_is_422(api):
    r = api.post("/v1/jobs", content=b"{not json", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]


# ---- jobs ----------------------------------------------------------------------------------

def test_submit_status_cancel(api, tmp_path):
    r = api.post("/v1/jobs", json={"kernel": "trivial", "shapes": [{"N": 16}, "N=32"], "device_class": "cpu",
                                   "trials": 5, "seed": 3}, headers=AUTH)
    assert r.status_code == 201
    job = r.json()["job"]
    st = api.get(f"/v1/jobs/{job}").json()
    assert st["state"] == "queued" and st["device_class"] == "cpu" and st["budget_trials"] == 5
    assert [k["key"] for k in st["keys"]] == [{"N": 16}, {"N": 32}]
    assert "no worker of class cpu is alive" in st["note"]
    assert api.get(f"/v1/jobs/{job[:8]}").json()["job"] == job  # a unique prefix, as the CLI takes
    assert [j["job"] for j in api.get("/v1/jobs").json()] == [job]
    assert api.post(f"/v1/jobs/{job}/cancel", headers=AUTH).json() == {"job": job, "state": "cancelled"}
    assert api.get(f"/v1/jobs/{job}").json()["state"] == "cancelled"
    assert api.post(f"/v1/jobs/{job}/cancel", headers=AUTH).status_code == 200  # cancelling twice is harmless
    r = api.get("/v1/jobs/" + "f" * 32)
    assert r.status_code == 404 and "no job" in r.json()["error"]
    assert api.post("/v1/jobs/" + "f" * 32 + "/cancel", headers=AUTH).status_code == 404


def test_cancelling_a_finished_job_is_409(tmp_path):
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    from db import lifecycle
    from db.session import session_scope

    with session_scope(url) as s:
        job, _ = lifecycle.create_job(s, kind="tune", origin="local", kernel="trivial", kernel_version="v", keys=[{}],
                                  key_hashes=["k"], sampler="auto", seed=None, budget_trials=1, request={},
                                  state="done")
    r = make_client(tmp_path / "home", db_url=url).post(f"/v1/jobs/{job}/cancel", headers=AUTH)
    assert r.status_code == 409 and "already ended (done)" in r.json()["error"]


def test_an_unreachable_database_is_503_not_500(tmp_path):
    api = make_client(tmp_path / "home", db_url="postgresql+psycopg://tuner:s3cret@127.0.0.1:1/nowhere")
    for r in (api.get("/v1/jobs"), api.get("/healthz"),
              api.post("/v1/jobs", json={"kernel": "trivial", "shapes": ["N=16"], "device_class": "cpu"},
                       headers=AUTH)):
        assert r.status_code == 503, r.text
        assert "127.0.0.1:1" in r.json()["error"] and "s3cret" not in r.text


# ---- reads of stored results ------------------------------------------------------------------

def test_bundle_etag_and_304(tmp_path):
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    rows.best(url, "h100-sxm-80gb", {"M": 4096, "N": 4096, "K": 4096}, 0.25)
    rows.best(url, "h100-sxm-80gb", {"M": 16, "N": 4096, "K": 4096}, 0.03)
    rows.best(url, "mi300x-192gb", {"M": 4096, "N": 4096, "K": 4096}, 0.2)
    api = make_client(tmp_path / "home", client=REMOTE, db_url=url)
    r = api.get("/v1/bundle", params={"device_class": "h100-sxm-80gb", "kernel": "matmul"}, headers=AUTH)
    assert r.status_code == 200
    doc, tag = r.json(), r.headers["etag"]
    assert tag.startswith('W/"') and len(doc["entries"]) == 2
    assert {e["device_class"] for e in doc["entries"]} == {"h100-sxm-80gb"}
    from tuner.formats import bundle

    found = bundle.Bundle(doc)  # what the runtime reads
    e = doc["entries"][0]
    assert found.exact("matmul", e["kernel_version"], e["key_hash"], "h100-sxm-80gb")[0][1] == rows.CONFIG
    again = api.get("/v1/bundle", params={"device_class": "h100-sxm-80gb", "kernel": "matmul"},
                    headers={**AUTH, "if-none-match": tag})
    assert again.status_code == 304 and again.content == b""
    assert api.get("/v1/bundle", params={"device_class": "h100"},
                   headers={**AUTH, "if-none-match": tag}).status_code == 304  # the family names the same rows
    rows.best(url, "h100-sxm-80gb", {"M": 16, "N": 4096, "K": 4096}, 0.025)  # a new best supersedes one
    changed = api.get("/v1/bundle", params={"device_class": "h100-sxm-80gb"}, headers={**AUTH, "if-none-match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag
    assert sorted(e["median_ms"] for e in changed.json()["entries"]) == [0.025, 0.25]
    r = api.get("/v1/bundle", params={"device_class": "tpu"}, headers=AUTH)
    assert r.status_code == 400 and "unknown device class 'tpu'" in r.json()["error"]
    assert api.get("/v1/bundle", headers=AUTH).status_code == 422  # device_class is required


def test_best_history_and_key(tmp_path):
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    h = rows.best(url, "h100-sxm-80gb", {"M": 64, "N": 64, "K": 64}, 0.5, driver="550.1")
    rows.best(url, "h100-sxm-80gb", {"M": 64, "N": 64, "K": 64}, 0.4, driver="555.1")
    api = make_client(tmp_path / "home", db_url=url)
    q = {"kernel": "matmul", "shape": "M=64,N=64,K=64", "dtype": "float16", "device_class": "h100"}
    current = api.get("/v1/best", params=q).json()
    assert sorted(r["median_ms"] for r in current) == [0.4, 0.5]  # one current best per stack
    assert len(api.get("/v1/history", params=q).json()) == 2
    key = api.get(f"/v1/keys/matmul/{h}").json()
    assert key["key"] == {"M": 64, "N": 64, "K": 64} and len(key["history"]) == 2 and key["trials"] == []
    assert {b["stack"]["driver"] for b in key["current"]} == {"550.1", "555.1"}
    assert api.get("/v1/keys/matmul/" + "0" * 16).status_code == 404
    r = api.get("/v1/best", params={"kernel": "nosuch", "shape": "M=1"})
    assert r.status_code == 400 and "unknown kernel 'nosuch'" in r.json()["error"]


def test_registry_and_fleet_reads(tmp_path):
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    rows.live_worker(url, "w-h100@test", "h100-sxm-80gb")
    api = make_client(tmp_path / "home", db_url=url)
    assert {"matmul", "softmax", "trivial"} <= {k["name"] for k in api.get("/v1/kernels").json()}
    (w,) = api.get("/v1/workers").json()
    assert w["name"] == "w-h100@test" and w["alive"] and w["device_class"] == "h100-sxm-80gb"
    assert w["stack"]["driver"] == "555.1" and w["heartbeat_at"]
    (dc,) = api.get("/v1/device-classes").json()
    assert dc["slug"] == "h100-sxm-80gb" and dc["live_workers"] == 1 and dc["aliases"] == ["h100"]
    assert api.get("/v1/runtime-misses").json() == []
    assert "/v1/jobs" in api.get("/openapi.json").json()["paths"]


def test_metrics(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    rows.best(url, "h100-sxm-80gb", {"M": 64, "N": 64, "K": 64}, 0.5, driver="550.1")
    rows.live_worker(url, "w1@test", "h100-sxm-80gb", driver="555.1")  # a new driver: the best is stale
    rows.live_worker(url, "w2@test", "h100-sxm-80gb", driver="555.1")
    api = make_client(tmp_path / "home", db_url=url)
    assert api.post("/v1/jobs", json={"kernel": "trivial", "shapes": ["N=16"], "device_class": "cpu"},
                    headers=AUTH).status_code == 201
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(api.get("/metrics").text) for s in family.samples}
    assert samples[("tuner_database_up", ())] == 1 and samples[("tuner_broker_up", ())] == 1
    assert samples[("tuner_jobs", (("state", "queued"),))] == 1
    assert samples[("tuner_jobs", (("state", "done"),))] == 0
    fp = next(k for k in samples if k[0] == "tuner_workers_live")[1]
    assert samples[("tuner_workers_live", fp)] == 2 and dict(fp)["device_class"] == "h100-sxm-80gb"
    assert samples[("tuner_stale_keys", (("device_class", "h100-sxm-80gb"),))] == 1
    assert samples[("tuner_queue_depth", (("queue", "tune.cpu"),))] == 2
    assert samples[("tuner_queue_depth", (("queue", "tune.h100"),))] == 0


# ---- tuner serve -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `tuner serve` refuses these at start, in one line with exit status 2: (arguments, environment, says)
SERVE_REFUSES = {
    "no token": (["--host", "0.0.0.0"], {}, "error: refusing to listen on 0.0.0.0 without a token"),
    "short token": (["--host", "0.0.0.0"], {"TUNER_API_TOKEN": "x" * 31},
                    "error: refusing to listen on 0.0.0.0 with a 31-character TUNER_API_TOKEN"),
    "open reads beyond the loopback": (["--host", "0.0.0.0", "--open-reads"], {"TUNER_API_TOKEN": "x" * 48},
                                       "error: refusing open reads on 0.0.0.0"),
    "bad allowed host": ([], {"TUNER_API_ALLOWED_HOSTS": "http://tuner.internal/"},
                         "error: TUNER_API_ALLOWED_HOSTS: 'http://tuner.internal/' is not a host name"),
}


@pytest.mark.parametrize("case", sorted(SERVE_REFUSES))
def test_serve_refuses_what_anyone_could_read_or_guess(case, tmp_path):
    args, env, says = SERVE_REFUSES[case]
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", "serve", "--port", "1", *args],
                          env=tuner_env(tmp_path / "home", **env), cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(says), lines[0]
    assert "x" * 31 not in proc.stderr and not (tmp_path / "home").exists()


@pytest.mark.integration
def test_serve_answers_on_the_loopback(tmp_path):
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tuner.cli", "serve", "--port", str(port)],
                            env=tuner_env(tmp_path / "home", TUNER_API_TOKEN=TOKEN), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < end, "tuner serve did not come up"
            time.sleep(0.3)
        # no address grants anything, the server's own included, nor a header that names one
        for headers in ({}, {"x-forwarded-for": "127.0.0.1"}):
            assert httpx.get(f"{base}/v1/jobs", headers=headers).status_code == 401
        assert httpx.get(f"{base}/v1/jobs", headers=AUTH).json() == []
        assert httpx.get(f"{base}/docs", headers=AUTH).status_code == 200
        r = httpx.post(f"{base}/v1/jobs", content=b"x" * (10 << 20),
                       headers={**AUTH, "content-type": "application/json"}, timeout=30)
        assert r.status_code == 413 and "larger than" in r.json()["error"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert "Traceback" not in out, out


@pytest.mark.integration
def test_a_database_that_goes_away_after_its_first_check_is_503(tmp_path):
    """The server checks a database once (tuner/db_open.py); a query that fails later is a 503
    too, with the reason in one line, and /healthz checks afresh."""
    from sqlalchemy import create_engine, text

    from db.session import dispose_all
    from tests.services import PG_ADMIN, pg_database

    with pg_database() as url:
        rows.schema(url)
        api = make_client(tmp_path / "home", db_url=url)
        assert api.get("/v1/jobs").status_code == 200 and api.get("/healthz").status_code == 200
        dispose_all()
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)"))
        admin.dispose()
        for r in (api.get("/v1/jobs"), api.get("/"), api.get("/healthz")):
            assert r.status_code == 503, r.text
            assert "cannot use database" in r.json()["error"] and "does not exist" in r.json()["error"]
        dispose_all()


def test_the_server_imports_the_kernel_modules_as_it_starts(tmp_path):
    """A drop-in kernel's module (torch, triton: seconds) imported by the first POST /v1/misses
    naming its kernel held that request past the runtime's 5 s timeout, and the batch was dropped:
    the app imports the configured modules when it is made, before any request."""
    code = ("import sys\nfrom tuner import settings\nfrom tuner.api.app import create_app\n"
            "settings.configure_plugins(settings.get())\nassert 'tests.kernels.tiles' not in sys.modules\n"
            "create_app(settings.get())\nprint('tests.kernels.tiles' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=tuner_env(tmp_path / "home", TUNER_KERNEL_MODULES="tests.kernels.tiles"))
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]
