"""The runtime's HTTP source and miss sink (TUNER_CONFIG_URL) against a real `tuner serve` on a
real PostgreSQL database, from fresh model-like processes that hold no database credentials:
the exact row over HTTP, the copy on disk that a restart without the server serves, misses
posted to POST /v1/misses and listed by `tuner misses` and GET /v1/runtime-misses, a wrong token
refused with one warning. The server listens on this machine's non-loopback address, so that
reads need the token as they do for an inference host on another machine, and over TLS (uvicorn's,
with a test CA from trustme that the model processes trust through SSL_CERT_FILE): the runtime
sends no token over plain http:// beyond the loopback.

A server that accepts and never answers is a real TCP listener (as the silent database of
test_runtime_safety.py): the launch returns while the runtime's question is still waiting on it.
"""
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time

import pytest

from tests.cli_helpers import ROOT, tuner_env
from tests.test_misses import _store_best
from tests.test_runtime import _entry, _key, _live_fp, live_env  # noqa: F401  (the fixture)
from tests.test_runtime_safety import SilentDatabase
from tuner import runtime

TOKEN = "t0ken-for-the-runtime-0123456789abcdef"  # beyond the loopback a token has 32 characters or more
KERNELS = "tests.kernels.tiles"
TUNED = {"BLOCK": 64, "num_warps": 4}  # stored for tiles N=64; the kernel's default is BLOCK 16, 1 warp

MODEL = r"""
import json, os, sys
from tuner import runtime
shapes = [int(n) for n in sys.argv[1:]]
for n in shapes:
    runtime.lookup("tiles", N=n, dtype="float32")
answers = {n: runtime.explain("tiles", N=n, dtype="float32") for n in shapes}
print(json.dumps({"answers": {n: {"level": a.level, "source": a.source, "config": dict(a.config), "reason": a.reason}
                              for n, a in answers.items()},
                  "misses_posted": runtime.flush_misses(),
                  "database_code": [m for m in ("sqlalchemy", "psycopg") if m in sys.modules],
                  "database_file": os.path.exists(os.path.join(os.environ["TUNER_HOME"], "tuner.db"))}))
"""


def host_address() -> str:
    """This machine's address on its outward interface (not the loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the interface
            address = s.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("this machine has no address but the loopback; reads from it need no token")
    return address


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# `tuner serve`'s app under uvicorn with TLS (`tuner serve` itself takes no certificate)
SERVE_TLS = """
import sys, uvicorn
from tuner import settings
from tuner.api.app import create_app
host, port, certfile, keyfile = sys.argv[1:]
settings.configure_plugins(settings.get())  # TUNER_KERNEL_MODULES, as the CLI does
uvicorn.run(create_app(settings.get(), host), host=host, port=int(port), ssl_certfile=certfile, ssl_keyfile=keyfile)
"""


def tls_files(directory, host: str) -> dict[str, str]:
    """A certificate for host from a fresh test CA: the paths of the CA (what clients trust), the
    certificate and its key."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert(host)
    paths = {name: str(directory / f"{name}.pem") for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(paths["ca"])
    cert.cert_chain_pems[0].write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    return paths


class Server:
    """`tuner serve`'s app over https on host:port, on the test's database."""

    def __init__(self, home, db_url: str, host: str, port: int):
        self.url = f"https://{host}:{port}"
        self.tls = tls_files(home / "tls", host)
        self.context = ssl.create_default_context(cafile=self.tls["ca"])
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE_TLS, host, str(port), self.tls["cert"],
                                      self.tls["key"]],
                                     # the server takes misses of the kernels it has registered only
                                     env=tuner_env(home, TUNER_DB_URL=db_url, TUNER_API_TOKEN=TOKEN,
                                                   TUNER_KERNEL_MODULES="tests.kernels.tiles,tests.kernels.reported"),
                                     cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        end = time.monotonic() + 120
        while not self.healthy():
            assert self.proc.poll() is None, self.proc.communicate()[0]
            assert time.monotonic() < end, "tuner serve did not come up"
            time.sleep(0.3)
        # the kernel modules imported now (the drop-in's imports torch: seconds on a busy machine), not
        # by a runtime's first POST /v1/misses, which gives up after 5 s
        self.get("/v1/kernels")

    def healthy(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2, context=self.context) as r:
                return r.status == 200
        except OSError:
            return False

    def get(self, path: str, token: str = TOKEN):
        import urllib.request

        request = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30, context=self.context) as r:
            return json.loads(r.read())

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        assert "Traceback" not in out, out
        return out


@pytest.fixture(scope="module")
def database():
    from db.session import upgrade
    from tests.services import pg_database

    with pg_database() as url:
        upgrade(url)
        _store_best(url, _key("tiles", N=64), TUNED, _live_fp())
        yield url


@pytest.fixture
def server(database, tmp_path):
    srv = Server(tmp_path / "server", database, host_address(), free_port(host_address()))
    yield srv
    srv.stop()


def model(home, server: Server, *shapes: int, token: str = TOKEN) -> tuple[dict, str]:
    """A fresh model-like process with only TUNER_CONFIG_URL and TUNER_API_TOKEN set (besides its
    home, its device, the test kernel's module, when it counts, and the CA it trusts): (what it
    printed, its stderr)."""
    env = tuner_env(home, TUNER_CONFIG_URL=server.url, TUNER_API_TOKEN=token, TUNER_DEVICE="cpu",
                    SSL_CERT_FILE=server.tls["ca"],
                    TUNER_KERNEL_MODULES=KERNELS, TUNER_MISS_FLUSH_S="3600",  # written when it flushes
                    TUNER_RUNTIME_DEADLINE_MS="60000")  # each lookup waits for its answer: counts are exact
    done = subprocess.run([sys.executable, "-c", MODEL, *map(str, shapes)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tuner: ")]


@pytest.mark.integration
def test_the_tuned_row_over_http_and_from_the_copy_after_the_server_stops(server, tmp_path):
    home = tmp_path / "model"
    out, err = model(home, server, 64)
    assert out["answers"]["64"] == {"level": "exact", "source": "http", "config": TUNED, "reason": None}
    assert out["database_code"] == [] and not out["database_file"]  # no database of its own, no driver loaded
    assert warnings_in(err) == [], err
    (copy,) = (home / "config-url").iterdir()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600 and TOKEN not in copy.read_text()

    server.stop()
    again, err = model(home, server, 64)  # a restart without the server: the copy answers
    assert again["answers"]["64"] == out["answers"]["64"] and "Traceback" not in err
    elsewhere, _ = model(tmp_path / "fresh", server, 64)  # a host without a copy gets the default
    assert elsewhere["answers"]["64"]["level"] == "default" and "unreachable" in elsewhere["answers"]["64"]["reason"]


@pytest.mark.integration
def test_a_miss_reaches_the_database_through_the_api(server, database, tmp_path):
    out, err = model(tmp_path / "model", server, 64, 100)
    assert out["answers"]["100"]["level"] == "nearest" and out["answers"]["100"]["config"] == TUNED
    assert out["misses_posted"] == 1 and warnings_in(err) == [], err  # N=100 only: N=64 was exact
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", "misses", "--json"], cwd=ROOT, capture_output=True,
                          text=True, env=tuner_env(tmp_path / "cli", TUNER_DB_URL=database), timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = [(r["key"], r["level"], r["count"]) for r in json.loads(proc.stdout) if r["kernel"] == "tiles"]
    assert listed == [({"N": 100}, "nearest", 2)]  # the lookup and the explain
    api = [(r["key"], r["level"], r["count"]) for r in server.get("/v1/runtime-misses?kernel=tiles")]
    assert api == listed


@pytest.mark.integration
def test_a_drop_ins_reported_winner_is_served_over_http_to_the_next_process(server, database, tmp_path):
    """@autotune(on_miss="autotune") behind a config server: the first process times and reports
    (POST /v1/misses), and is served the stored winner once the bundle is fetched again; the next
    process is served it from the bundle without timing (tests/test_dropin_reported.py, over HTTP)."""
    from tests.test_dropin_reported import launch

    env = tuner_env(tmp_path / "model", TUNER_CONFIG_URL=server.url, TUNER_API_TOKEN=TOKEN, TUNER_DEVICE="cpu",
                    SSL_CERT_FILE=server.tls["ca"], TUNER_KERNEL_MODULES="tests.kernels.reported",
                    TUNER_MISS_FLUSH_S="3600", TRITON_INTERPRET="1")
    first = launch(env, 64, 700)
    assert sorted(first["timed"]) == [32, 64, 128] and (first["block"], first["level"]) == (64, "reported")
    second = launch({**env, "TUNER_HOME": str(tmp_path / "second")}, 128, 700)  # its own timing: 128
    assert second == {"timed": [], "first": 64, "block": 64, "level": "reported"}
    bundle = server.get("/v1/bundle?device_class=cpu-interpreter")
    (entry,) = [e for e in bundle["reported"] if e["key"]["dims"] == {"N": 700}]
    assert (entry["config"]["BLOCK"], entry["median_ms"]) == (64, 0.5)


@pytest.mark.integration
def test_a_wrong_token_is_refused_with_one_warning(server, tmp_path):
    out, err = model(tmp_path / "model", server, 64, 100, token="not-the-token")
    assert {a["level"] for a in out["answers"].values()} == {"default"}
    (warning,) = warnings_in(err)
    assert "HTTP 401" in warning and "wrong token" in warning and "Traceback" not in err
    assert not (tmp_path / "model" / "config-url").exists()


# ---- a server that accepts and never answers (in this process) ---------------------------------

@pytest.fixture
def silent_server():
    srv = SilentDatabase()  # a TCP listener that accepts and never sends a byte
    yield srv
    srv.close()


def test_a_server_that_never_answers_costs_a_launch_no_more_than_the_deadline(live_env, monkeypatch,  # noqa: F811
                                                                                silent_server):
    monkeypatch.setenv("TUNER_CONFIG_URL", f"http://127.0.0.1:{silent_server.port}")
    monkeypatch.setenv("TUNER_RUNTIME_DEADLINE_MS", "100")
    live_env()
    first = runtime.explain("tiles", N=64, dtype="float32")
    assert first.level == "default" and "waiting for config server" in first.reason
    assert silent_server.accepted.wait(30) and silent_server.waiting_clients() >= 1  # still asking


def test_a_copy_on_disk_is_served_while_the_server_hangs(live_env, monkeypatch, tmp_path, silent_server):  # noqa: F811
    """The copy answers at once; the server is asked again in a thread of its own, which the
    answer does not wait for (it would have waited up to the fetch's 10 s timeout)."""
    url = f"http://127.0.0.1:{silent_server.port}"
    (tmp_path / "config-url").mkdir()
    (tmp_path / "config-url" / "cpu-interpreter.json").write_text(json.dumps(
        {"format": "tuner-bundle", "version": 1, "entries": [_entry(_key("tiles", N=64), TUNED, _live_fp())],
         "served_by": {"url": url, "etag": 'W/"x"', "fetched_at": "2026-01-01T00:00:00+00:00"}}))
    monkeypatch.setenv("TUNER_CONFIG_URL", url)
    monkeypatch.setenv("TUNER_RUNTIME_DEADLINE_MS", "0")
    live_env()
    runtime.lookup("tiles", N=64, dtype="float32")
    assert runtime.settle(60)
    answer = runtime.explain("tiles", N=64, dtype="float32")
    assert (answer.level, answer.source, dict(answer.config)) == ("exact", "http", TUNED)
    assert silent_server.accepted.wait(30) and silent_server.waiting_clients() >= 1  # the refresh still waits


def test_misses_the_server_cannot_take_are_dropped_with_one_warning(live_env, monkeypatch, tmp_path,  # noqa: F811
                                                                    caplog):
    """No server at the URL: the copy answers, each flush's POST fails and its batch is dropped;
    one warning, lookups go on."""
    import logging

    from tests.test_api import free_port as loopback_port

    url = f"http://127.0.0.1:{loopback_port()}"  # nothing listens there
    (tmp_path / "config-url").mkdir()
    (tmp_path / "config-url" / "cpu-interpreter.json").write_text(json.dumps(
        {"format": "tuner-bundle", "version": 1, "entries": [_entry(_key("tiles", N=64), TUNED, _live_fp())],
         "served_by": {"url": url}}))
    monkeypatch.setenv("TUNER_CONFIG_URL", url)
    monkeypatch.setenv("TUNER_MISS_FLUSH_S", "3600")
    live_env()
    with caplog.at_level(logging.WARNING, logger="tuner.runtime"):
        for n in (100, 200, 300):
            assert runtime.explain("tiles", N=n, dtype="float32").level == "nearest"
            assert runtime.flush_misses() == 0
    assert sum("cannot write runtime misses to config server" in r.message for r in caplog.records) == 1
    assert runtime.lookup("tiles", N=100, dtype="float32") == TUNED


def test_the_url_is_checked_and_wins_over_a_bundle(monkeypatch, tmp_path):
    from tuner import settings
    from tuner.errors import UserError
    from tuner.runtime.sources import open_source

    s = settings.from_env({"TUNER_HOME": str(tmp_path), "TUNER_CONFIG_URL": "http://tuner.internal:8000/",
                           "TUNER_CONFIG_BUNDLE": str(tmp_path / "b.json")})
    assert s.config_url == "http://tuner.internal:8000" and open_source(s).name == "http"
    for bad in ("tuner.internal:8000", "ftp://x", "http://", "http://h:port"):
        with pytest.raises(UserError, match="TUNER_CONFIG_URL=.* is not an http"):
            settings.from_env({"TUNER_CONFIG_URL": bad})
        problems = []
        assert settings.from_env({"TUNER_CONFIG_URL": bad}, on_error=problems.append).config_url is None
        assert len(problems) == 1
