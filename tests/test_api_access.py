"""The HTTP API's access rules (tuner/api/), in-process through Starlette's TestClient: each
token's scope, what open reads allow, allowed hosts, the session a login gives, the security
headers and CSP of every answer, the packaged docs, /healthz, and how `tuner serve` checks its
bind address and starts."""
import re
import sys

import pytest

from tests import rows
from tests.cli_helpers import tuner_env
from tests.test_api import (AUTH, LOCAL, MISS_DIMS, REMOTE, RUNTIME, RUNTIME_TOKEN, SAME_ORIGIN, TOKEN, jobs_written,
                            make_client, miss)
from tuner import settings as settings_mod


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
