"""The HTTP API (tuner/api/) against a real database and broker: the same bad inputs as the CLI,
the token rules, the bundle's ETag, /metrics, and `tuner serve` itself.

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
from db.clock import utcnow
from tuner.runtime.miss_tally import POST_BATCH

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


# ---- tokens, Host, Origin, sessions ------------------------------------------------------------

JOB = {"kernel": "trivial", "shapes": ["N=16"], "device_class": "cpu"}
FORM = {"kernel": "trivial", "shapes": "N=16", "device_class": "cpu", "trials": "3"}
FAKE_JOB = "f" * 32

# what a caller without the right to it sends: (method, path, client, headers, body, status, what the
# one line says). Each is refused before anything is read or written.
REFUSED = {
    "read without a token": ("GET", "/v1/jobs", LOCAL, {}, None, 401, "needs the token"),
    "read from another host": ("GET", "/v1/jobs", REMOTE, {}, None, 401, "needs the token"),
    "page without a token": ("GET", "/", LOCAL, {}, None, 401, "log in at /login"),
    "metrics without a token": ("GET", "/metrics", LOCAL, {}, None, 401, "needs the token"),
    "docs without a token": ("GET", "/openapi.json", LOCAL, {}, None, 401, "needs the token"),
    # a same-host forwarder (ssh tunnel, port-forward, sidecar) or a forged header make a caller
    # look local: neither grants anything
    "forwarded for localhost": ("GET", "/v1/bundle?device_class=cpu", REMOTE,
                                {"x-forwarded-for": "localhost"}, None, 401, "needs the token"),
    "forwarded for the loopback": ("GET", "/metrics", LOCAL, {"x-forwarded-for": "127.0.0.1",
                                                              "x-real-ip": "127.0.0.1"}, None, 401, "needs the token"),
    "wrong token": ("GET", "/v1/jobs", LOCAL, {"authorization": "Bearer wrong"}, None, 401, "wrong token"),
    "write without a token": ("POST", "/v1/jobs", LOCAL, {}, JOB, 401, "a write needs the token"),
    "token without Bearer": ("POST", "/v1/jobs", LOCAL, {"authorization": TOKEN}, JOB, 401, "needs the token"),
    "runtime token submits": ("POST", "/v1/jobs", LOCAL, RUNTIME, JOB, 403, "may only GET /v1/bundle and POST"),
    "runtime token cancels": ("POST", f"/v1/jobs/{FAKE_JOB}/cancel", LOCAL, RUNTIME, None, 403, "may only GET"),
    "runtime token reads jobs": ("GET", "/v1/jobs", LOCAL, RUNTIME, None, 403, "use TUNER_API_TOKEN for this"),
    "runtime token reads metrics": ("GET", "/metrics", LOCAL, RUNTIME, None, 403, "may only GET /v1/bundle"),
    "runtime token on a page": ("GET", "/", LOCAL, RUNTIME, None, 403, "may only GET /v1/bundle"),
    "unknown Host": ("POST", "/v1/jobs", LOCAL, {**AUTH, "host": "rebound.example.org"}, JOB, 400,
                     "unknown Host header 'rebound.example.org'"),
    "unknown Host on a read": ("GET", "/v1/jobs", LOCAL, {**AUTH, "host": "rebound.example.org:8000"}, None, 400,
                               "add its name to TUNER_API_ALLOWED_HOSTS"),
    "cross-origin form": ("POST", "/jobs", LOCAL, {**AUTH, "origin": "http://evil.example"}, FORM, 403,
                          "posted from this server's own pages"),
    "form without origin": ("POST", "/jobs", LOCAL, AUTH, FORM, 403, "posted from this server's own pages"),
    "cross-site referer": ("POST", "/jobs", LOCAL, {**AUTH, "referer": "http://evil.example/jobs"}, FORM, 403,
                           "posted from this server's own pages"),
    "cross-origin login": ("POST", "/login", LOCAL, {"origin": "http://evil.example"}, {"token": TOKEN}, 403,
                           "posted from this server's own pages"),
    "form without a session": ("POST", "/jobs", LOCAL, SAME_ORIGIN, FORM, 401, "needs the token"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_request_without_the_right_is_refused_in_one_json_line_and_writes_nothing(case, tmp_path):
    method, path, client, headers, body, status, says = REFUSED[case]
    home = tmp_path / "home"
    api = make_client(home, client=client, auth=False)
    form = path in ("/jobs", "/login")
    r = api.request(method, path, headers=headers, **({"data": body} if form else {"json": body}))
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert says in error and "\n" not in error and len(error) < 300, error
    assert "set-cookie" not in r.headers and jobs_written(home) == 0
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"


def test_each_token_has_its_scope(tmp_path):
    """The operators' token does everything; the runtime's fetches the bundle and posts misses."""
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    rows.best(url, "h100-sxm-80gb", MISS_DIMS, 0.03)
    runtime = make_client(tmp_path / "home", client=REMOTE, db_url=url, auth=False)
    r = runtime.get("/v1/bundle", params={"device_class": "h100-sxm-80gb"}, headers=RUNTIME)
    assert r.status_code == 200 and len(r.json()["entries"]) == 1
    r = runtime.post("/v1/misses", json={"records": [miss()]}, headers=RUNTIME)
    assert r.status_code == 200 and r.json()["records"] == 1, r.text
    for path in ("/v1/jobs", "/v1/runtime-misses", "/metrics", "/", "/docs"):
        assert runtime.get(path, headers=RUNTIME).status_code == 403, path
    operator = make_client(tmp_path / "home", client=REMOTE, db_url=url)
    for path in ("/v1/jobs", "/v1/runtime-misses", "/metrics", "/", "/docs", "/openapi.json", "/v1/bundle?device_class=cpu"):
        assert operator.get(path).status_code == 200, path
    assert operator.post("/v1/jobs", json=JOB).status_code == 201
    assert operator.post("/v1/misses", json={"records": [miss()]}).status_code == 200


def test_open_reads_open_reads_only(tmp_path):
    """`tuner serve --open-reads` (a laptop's single user): reads without a token, writes with it."""
    home = tmp_path / "home"
    laptop = make_client(home, auth=False, TUNER_API_OPEN_READS="1")
    assert laptop.post("/v1/jobs", json=JOB).status_code == 401
    assert laptop.post("/v1/jobs", json=JOB, headers=AUTH).status_code == 201
    for path in ("/v1/jobs", "/metrics", "/", "/docs", "/openapi.json"):
        assert laptop.get(path).status_code == 200, path
    assert laptop.post("/jobs", data=FORM, headers=SAME_ORIGIN).status_code == 401  # a form still needs a login
    assert laptop.get("/v1/jobs", headers=RUNTIME).status_code == 403  # a token is held to its scope
    assert jobs_written(home) == 1


def test_allowed_hosts(tmp_path):
    """The bound address, the loopback's names and TUNER_API_ALLOWED_HOSTS; nothing else."""
    api = make_client(tmp_path / "home", host="10.1.2.3", TUNER_API_ALLOWED_HOSTS="tuner.internal,*.example.org")
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "10.1.2.3:8000", "tuner.internal",
                 "a.b.example.org:443", "LOCALHOST"):
        r = api.get("/v1/kernels", headers={"host": host})
        assert r.status_code == 200, (host, r.text)
    for host in ("10.1.2.4", "example.org", "evil-example.org", "tuner.internal.evil.net", "", "[::1", "a b"):
        r = api.get("/v1/kernels", headers={"host": host})
        assert r.status_code == 400 and "unknown Host header" in r.json()["error"], (host, r.text)


def test_login_gives_a_session_not_the_token_and_logout_ends_it(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    rows.schema(f"sqlite:///{home}/tuner.db")  # the embedded default, with its tables
    browser = make_client(home, client=REMOTE, auth=False)
    assert browser.get("/jobs").status_code == 401
    assert browser.post("/login", data={"token": RUNTIME_TOKEN}, headers=SAME_ORIGIN).status_code == 401
    assert browser.post("/login", data={"token": "nope"}, headers=SAME_ORIGIN).status_code == 401
    assert not browser.cookies
    login = browser.post("/login", data={"token": TOKEN}, headers=SAME_ORIGIN, follow_redirects=False)
    assert login.status_code == 303
    cookie = login.headers["set-cookie"]
    sid = browser.cookies["tuner_session"]
    assert TOKEN not in cookie and len(sid) >= 32
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    for path in ("/", "/jobs", "/v1/jobs", "/metrics", "/docs", "/openapi.json"):
        assert browser.get(path).status_code == 200, path
    assert browser.post("/v1/jobs", json=JOB).status_code == 401  # a cookie is no token for an API write
    r = browser.post("/jobs", data=FORM, headers=SAME_ORIGIN, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/jobs/") and jobs_written(home) == 1
    assert browser.post("/logout", headers=SAME_ORIGIN, follow_redirects=False).status_code == 303
    assert not browser.cookies
    browser.cookies.set("tuner_session", sid)  # the old session id is dead on the server too
    assert browser.get("/v1/jobs").status_code == 401
    browser.cookies.set("tuner_session", TOKEN)  # nor is the token itself a session
    assert browser.get("/v1/jobs").status_code == 401


def test_every_answer_carries_the_security_headers(tmp_path):
    api = make_client(tmp_path / "home")
    for path, headers in (("/", {"accept": "text/html"}), ("/login", {}), ("/v1/kernels", {}), ("/docs", {}),
                          ("/v1/nosuch", {}), ("/static/dashboard.css", {}), ("/healthz", {}),
                          ("/v1/jobs", {"host": "evil.example"})):
        r = api.get(path, headers=headers)
        csp = {d.split()[0]: d.split()[1:] for d in r.headers["content-security-policy"].split("; ")}
        assert csp["default-src"] == ["'self'"] and csp["frame-ancestors"] == ["'none'"], path
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff", path


def test_the_dashboard_has_no_inline_script_or_style(tmp_path):
    """What `default-src 'self'` would block: an inline <script> or <style>, a style attribute, or
    anything from another origin (the plots' SVG included: rows of a key give the key page its plot)."""
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    key_hash = rows.best(url, "h100-sxm-80gb", {"M": 64, "N": 64, "K": 64}, 0.5)
    api = make_client(tmp_path / "home", db_url=url)
    for path in ("/", "/jobs", "/login", "/docs", f"/keys/matmul/{key_hash}"):
        html = api.get(path).text
        assert "<svg" in html or path != f"/keys/matmul/{key_hash}"
        assert not re.search(r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son[a-z]+=", html), path
        for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
            assert ref.startswith(("/", "#")) and not ref.startswith("//"), (path, ref)  # "#": the SVG's own parts


def test_docs_are_served_from_packaged_files(tmp_path):
    """/docs names no other origin, and every file it loads is served here (no internet needed)."""
    api = make_client(tmp_path / "home")
    html = api.get("/docs").text
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert any(r.endswith("swagger-ui-bundle.js") for r in refs) and any(r.endswith(".css") for r in refs)
    for ref in refs:
        r = api.get(ref, headers={})
        assert r.status_code == 200 and len(r.content) > 100, ref
    assert "SwaggerUIBundle" in api.get("/static/docs.js").text
    assert "/v1/jobs" in api.get("/openapi.json").json()["paths"]


def test_healthz_says_no_more_than_its_status_without_the_token(tmp_path):
    api = make_client(tmp_path / "home", db_url="postgresql+psycopg://tuner:s3cret@127.0.0.1:1/nowhere", auth=False)
    r = api.get("/healthz")
    assert r.status_code == 503 and r.json() == {"status": "unavailable"}
    r = api.get("/healthz", headers=AUTH)  # an operator is told why
    assert r.status_code == 503 and "127.0.0.1:1" in r.json()["error"] and "s3cret" not in r.text


def test_check_bind():
    from tuner.api.auth import Policy, check_bind, is_loopback
    from tuner.errors import UserError

    long, other = "x" * 32, "y" * 40
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.0.2.7", "example.org", "testclient", None))
    check_bind("127.0.0.1", Policy())
    check_bind("127.0.0.1", Policy("tok", "", open_reads=True))  # short tokens and open reads: loopback only
    check_bind("0.0.0.0", Policy(long, other))
    for host, policy, says in (
            ("0.0.0.0", Policy(), "refusing to listen on 0.0.0.0 without a token"),
            ("0.0.0.0", Policy("t"), "with a 1-character TUNER_API_TOKEN: give one of at least 32 characters"),
            ("::", Policy("x" * 31), "with a 31-character TUNER_API_TOKEN"),
            ("192.0.2.7", Policy(long, "short"), "with a 5-character TUNER_RUNTIME_TOKEN"),
            ("0.0.0.0", Policy(long, open_reads=True), "refusing open reads on 0.0.0.0"),
            ("127.0.0.1", Policy(long, long), "TUNER_RUNTIME_TOKEN equals TUNER_API_TOKEN")):
        with pytest.raises(UserError, match=re.escape(says)):
            check_bind(host, policy)


def test_serve_freezes_its_start_up_heap_with_the_lazily_imported_modules(tmp_path, monkeypatch):
    """The garbage collector's full passes walked everything start-up made (torch, Triton, the
    kernel modules) and stalled every request in flight for up to 183 ms: the p95 tail of whichever
    route they hit at fleet scale (bench/api_latency.py --scale). `tuner serve` now freezes that heap,
    after importing what pages import on first use, before it listens."""
    import gc

    import uvicorn

    from tuner.api import app as app_mod, routes

    seen = {}

    def listen(app, **kw):  # where uvicorn would start serving
        seen.update(frozen=gc.get_freeze_count(), lazy=[m for m in app_mod.LAZY_HEAVY if m not in sys.modules],
                    kernels=routes._kernels.cache_info().currsize)

    monkeypatch.setattr(uvicorn, "run", listen)
    routes._kernels.cache_clear()  # the space sizes, computed at start too (1.2 s on a first GET /v1/kernels)
    for name in app_mod.LAZY_HEAVY:  # as a fresh server process has them: not imported yet
        monkeypatch.delitem(sys.modules, name, raising=False)
    env = {**tuner_env(tmp_path / "home"), "TUNER_API_TOKEN": TOKEN}
    try:
        app_mod.serve(settings_mod.from_env(env), "127.0.0.1", 0)
    finally:
        gc.unfreeze()
    assert seen["frozen"] > 10_000 and seen["lazy"] == [] and seen["kernels"] == 1, seen


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


# ---- runtime misses (what tuner.runtime's HttpSink posts) --------------------------------------

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


def test_runtime_misses_are_posted_listed_and_counted(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    api = make_client(tmp_path / "home", client=REMOTE, db_url=url)
    r = api.post("/v1/misses", json={"records": [miss(), miss(level="default", count=2)]}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"records": 2, "rows": 2}, r.text
    assert api.post("/v1/misses", json={"records": [miss()]}, headers=AUTH).json() == {"records": 1, "rows": 1}
    listed = api.get("/v1/runtime-misses", headers=AUTH).json()
    assert [(m["key"], m["level"], m["count"], m["device_class"]) for m in listed] == [
        (MISS_DIMS, "nearest", 6, "h100-sxm-80gb"), (MISS_DIMS, "default", 2, "h100-sxm-80gb")]
    assert listed[0]["first_seen"].startswith("2026-01-01") and listed[0]["last_seen"].startswith("2026-01-02")
    assert len(api.get("/v1/runtime-misses", params={"device_class": "h100"}, headers=AUTH).json()) == 2
    assert api.get("/v1/runtime-misses", params={"device_class": "mi300x"}, headers=AUTH).json() == []
    assert api.get("/v1/runtime-misses", params={"kernel": "softmax"}, headers=AUTH).json() == []

    def samples():
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in
                text_string_to_metric_families(api.get("/metrics", headers=AUTH).text) for s in family.samples}

    labels = (("device_class", "h100-sxm-80gb"), ("kernel", "matmul"))
    before = samples()
    assert before[("tuner_runtime_misses_total", labels + (("level", "nearest"),))] == 6
    assert before[("tuner_runtime_misses_total", labels + (("level", "default"),))] == 2
    assert before[("tuner_runtime_missed_keys", (("device_class", "h100-sxm-80gb"),))] == 2
    rows.best(url, "h100-sxm-80gb", MISS_DIMS, 0.03)  # the key is tuned on that stack: no longer a miss
    assert api.get("/v1/runtime-misses", headers=AUTH).json() == []
    after = samples()
    assert after[("tuner_runtime_misses_total", labels + (("level", "nearest"),))] == 6  # a counter never drops
    assert ("tuner_runtime_missed_keys", (("device_class", "h100-sxm-80gb"),)) not in after


# what a runtime (or anyone) might post wrong: (body, status, what the one line says)
BAD_MISSES = {
    "no records": ({"records": []}, 422, "records: List should have at least 1 item"),
    "not a list": ({"records": "x"}, 422, "records: Input should be a valid list"),
    "unknown field": ({"records": [miss()], "extra": 1}, 422, "extra: Extra inputs are not permitted"),
    "too many": ({"records": [miss()] * (POST_BATCH + 1)}, 422, f"records: List should have at most {POST_BATCH} items"),
    "not a record": ({"records": [{}]}, 400, "records[0] is not a miss record (missing kernel, kernel_version"),
    "second bad": ({"records": [miss(), miss(count=0)]}, 400, "records[1] is not a miss record (count must be"),
    "key mismatch": ({"records": [miss(dtype="float32")]}, 400, "must match the key"),
    "bad level": ({"records": [miss(level="exact")]}, 400, "level must be one of other_fingerprint"),
    "bad time": ({"records": [miss(last_seen="yesterday")]}, 400, "last_seen must be an ISO-8601 time"),
    # only what a registered kernel at its version, a known class and a stack could have served
    # (issue 31, item 5): anything else made rows and /metrics series nobody can tune
    "unknown kernel": ({"records": [miss(kernel="k" * 5000, key={**miss()["key"], "kernel": "k" * 5000})]}, 400,
                       "records[0] is not a miss record (unknown kernel 'kkkk"),
    "old kernel version": ({"records": [miss(kernel_version="0" * 16, key={**miss()["key"], "version": "0" * 16})]},
                           400, "is not matmul's current version"),
    "a key make_key refuses": ({"records": [miss(key={**miss()["key"], "dims": {"M": 0, "N": 1, "K": 1}})]}, 400,
                               "shape dim M=0 must be a positive integer"),
    "a dim past int64": ({"records": [miss(key={**miss()["key"], "dims": {**MISS_DIMS, "M": 2**63}})]}, 400,
                         "each an integer below 2**63"),
    "unknown class": ({"records": [miss(device_class="tpu-v5")]}, 400, "device_class 'tpu-v5' is not a device-class slug"),
    "a family for a class": ({"records": [miss(device_class="h100")]}, 400, "is not a device-class slug"),
    "bad fingerprint": ({"records": [miss(fingerprint="x" * 80)]}, 400, "fingerprint must be a stack hash"),
    "count past the bound": ({"records": [miss(count=2**63 - 1)]}, 400, "count must be an integer from 1 to 1000000000"),
    # a drop-in's reported winner is served to every process of the class: checked as a stored row
    "a winner outside the space": ({"records": [miss(), miss(reported={"config": {"BLOCK_M": 1}, "median_ms": 1.0})]},
                                   400, "records[1] is not a miss record (the reported configuration is refused"),
    "a winner of another form": ({"records": [miss(reported=[1])]}, 400, "reported must be {config"),
}


@pytest.mark.parametrize("case", sorted(BAD_MISSES))
def test_bad_misses_get_one_json_line_and_write_nothing(case, tmp_path):
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    api = make_client(tmp_path / "home", db_url=url)
    body, status, says = BAD_MISSES[case]
    r = api.post("/v1/misses", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert says in error and "\n" not in error and "Traceback" not in error, error
    assert api.get("/v1/runtime-misses").json() == []


def test_list_endpoints_take_a_limit(tmp_path):
    """GET /v1/runtime-misses answered every row the table held; every list takes `limit` now
    (default 100, at most 1000)."""
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    api = make_client(tmp_path / "home", db_url=url)
    levels = ("nearest", "default", "other_fingerprint")
    r = api.post("/v1/misses", json={"records": [miss(level=lv, count=n + 1) for n, lv in enumerate(levels)]},
                 headers=AUTH)
    assert r.status_code == 200, r.text
    assert [m["level"] for m in api.get("/v1/runtime-misses", params={"limit": 2}).json()] == [
        "other_fingerprint", "default"]  # the most frequent first
    assert len(api.get("/v1/runtime-misses").json()) == 3
    for path in ("/v1/runtime-misses", "/v1/jobs", "/v1/workers", "/v1/device-classes", "/v1/best"):
        r = api.get(path, params={"limit": 1001})
        assert r.status_code == 422 and "limit" in r.json()["error"], (path, r.text)
        assert api.get(path, params={"limit": 1}).status_code == 200, path


def test_metrics_name_registered_kernels_and_known_classes_only(tmp_path):
    """10 posted requests made 5,003 series: what the runtime posts names the labels. Rows of an
    unregistered kernel or an unknown class (written before the checks, or straight to the
    database) are left out of /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    from db import store
    from db.session import session_scope

    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    good = {**miss(), "key_hash": "1" * 16, "first_seen": utcnow(), "last_seen": utcnow()}
    with session_scope(url) as s:
        store.record_misses(s, [good, {**good, "key_hash": "2" * 16, "kernel": "garbage-kernel"},
                                {**good, "key_hash": "3" * 16, "device_class": "nvidia-zz-1sm-1gb"}])
    api = make_client(tmp_path / "home", db_url=url)
    labels = {tuple(sorted(sample.labels.items())) for family in text_string_to_metric_families(api.get("/metrics").text)
              if family.name.startswith("tuner_runtime_miss") for sample in family.samples}
    assert labels == {(("device_class", "h100-sxm-80gb"), ("kernel", "matmul"), ("level", "nearest")),
                      (("device_class", "h100-sxm-80gb"),)}, labels


def test_posting_misses_needs_the_token(tmp_path):
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    api = make_client(tmp_path / "home", db_url=url, auth=False)
    for headers in ({}, {"authorization": "Bearer wrong"}):
        r = api.post("/v1/misses", json={"records": [miss()]}, headers=headers)
        assert r.status_code == 401 and r.json()["error"], r.text
    r = api.post("/v1/misses", content=b"{not json", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]
    assert api.get("/v1/runtime-misses", headers=AUTH).json() == []


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
