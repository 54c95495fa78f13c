"""The runtime's HTTP client against real local servers that misbehave: an answer larger than
TUNER_RUNTIME_MAX_BUNDLE_MB (declared, or streamed without a length), headers trickled a byte at
a time, a proxy in the environment that nobody asked for, a token about to go in clear to
another host; and https, which works with the token. Also where the runtime's files land and
who may read them."""
import json
import logging
import ssl
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.test_runtime import _entry, _key, _live_fp, live_env  # noqa: F401  (the fixture)
from tuner import runtime

TUNED = {"BLOCK": 64, "num_warps": 4}  # stored for tiles N=64; its default is BLOCK 16, 1 warp
RUNTIME_TOKEN, API_TOKEN = "runtime-token-for-inference-hosts", "operator-token"


def bundle(*entries) -> bytes:
    return json.dumps({"format": "tuner-bundle", "version": 1, "entries": list(entries)}).encode()


class Local:
    """A real HTTP(S) server in a thread of this process; `answer(handler)` writes each answer (the
    default: `body` as JSON). What each request was is kept in `requests` (method, path, headers)."""

    def __init__(self, answer=None, host="127.0.0.1", body=b"{}", tls=None):
        outer = self
        self.requests, self.body, self.answer = [], body, answer or Local.json

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.headers.get("Content-Length"):
                    self.rfile.read(int(self.headers["Content-Length"]))
                outer.answer(outer, self)

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def json(self, h, status=200):
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(self.body)))
        h.end_headers()
        h.wfile.write(self.body)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers():
    made = []
    yield lambda *a, **k: made.append(Local(*a, **k)) or made[-1]
    for s in made:
        s.close()


def _config_url(monkeypatch, live_env, url, **extra):  # noqa: F811
    monkeypatch.setenv("TUNER_CONFIG_URL", url)
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    live_env()


def _runtime_warnings(caplog):
    return [r.message for r in caplog.records if r.name == "tuner.runtime"]


def test_an_answer_over_the_cap_is_refused_and_not_read(live_env, monkeypatch, servers, caplog):  # noqa: F811
    """One server declares 5 GB, the other streams without a length: each is refused at
    TUNER_RUNTIME_MAX_BUNDLE_MB (here 1), with one warning, having read about that much at most.
    (The old client read whatever came, for as long as its 10 s allowed.)"""
    sent = {"chunked": 0, "declared": 0}

    def endless(kind):
        def answer(srv, h):
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header(*(("Transfer-Encoding", "chunked") if kind == "chunked" else ("Content-Length", str(5 << 30))))
            h.end_headers()
            block = b" " * (1 << 16)
            frame = b"%x\r\n%s\r\n" % (len(block), block) if kind == "chunked" else block
            try:
                while sent[kind] < (1 << 30):  # a bound for the test's own sake: 1 GB
                    h.wfile.write(frame)
                    sent[kind] += len(block)
            except OSError:  # the client hung up
                pass
        return answer

    for kind in ("chunked", "declared"):
        srv = servers(endless(kind))
        _config_url(monkeypatch, live_env, srv.url, TUNER_RUNTIME_MAX_BUNDLE_MB="1")
        with caplog.at_level(logging.WARNING, logger="tuner.runtime"):
            caplog.clear()
            for n in (64, 100):
                answer = runtime.explain("tiles", N=n, dtype="float32")
                assert answer.level == "default" and answer.unreachable, answer
        (warning,) = _runtime_warnings(caplog)
        assert "TUNER_RUNTIME_MAX_BUNDLE_MB=1" in warning, warning
        # what the server got into the socket before the client hung up: the cap and the buffers
        assert sent[kind] < 32 << 20, (kind, sent)


def test_headers_trickled_byte_by_byte_are_bounded_by_the_one_deadline(live_env, monkeypatch, servers):  # noqa: F811
    """The server sends a byte of its headers every 0.1 s for a minute: each read of the socket is
    quick, so only a deadline over the whole request ends the call (here 1 s; 10 s by default)."""
    from tuner.runtime.sources import HttpSource

    trickling = threading.Event()

    def trickle(srv, h):
        h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        end = time.monotonic() + 60
        trickling.set()
        try:
            while time.monotonic() < end:
                h.wfile.write(b"x")
                h.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass

    srv = servers(trickle)
    monkeypatch.setattr(HttpSource, "FETCH_TIMEOUT_S", 1.0)
    _config_url(monkeypatch, live_env, srv.url)
    start = time.monotonic()
    answer = runtime.explain("tiles", N=64, dtype="float32")  # the lookup waits for its answer (live_env)
    took = time.monotonic() - start
    assert trickling.is_set() and answer.level == "default" and "TimeoutError" in answer.reason, answer
    assert took < 30, f"the call took {took:.0f} s against a 1 s deadline"


def test_no_proxy_from_the_environment_unless_asked(live_env, monkeypatch, servers, tmp_path):  # noqa: F811
    proxy = servers(lambda srv, h: srv.json(h, status=502))
    real = servers(body=bundle(_entry(_key("tiles", N=64), TUNED, _live_fp())))
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("http_proxy", proxy.url)
    _config_url(monkeypatch, live_env, real.url)
    assert runtime.explain("tiles", N=64, dtype="float32").level == "exact"
    assert proxy.requests == [] and len(real.requests) == 1

    import shutil

    shutil.rmtree(tmp_path / "config-url")  # no copy to answer from: the bundle is fetched again
    _config_url(monkeypatch, live_env, real.url, TUNER_RUNTIME_PROXY_FROM_ENV="1")
    assert runtime.explain("tiles", N=64, dtype="float32").level == "default"  # the proxy answered 502
    assert [(r[0], r[1]) for r in proxy.requests] == [("GET", f"{real.url}/v1/bundle?device_class=cpu-interpreter")]
    assert len(real.requests) == 1


def _tls(tmp_path, host):
    """(the server's TLS context, the CA file a client trusts) for a certificate of host."""
    import trustme

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return context, tmp_path / "ca.pem"


def test_the_token_goes_over_https_and_never_in_clear_to_another_host(live_env, monkeypatch, servers,  # noqa: F811
                                                                      tmp_path, caplog):
    """To this machine's outward address: over http:// nothing is sent (one warning, defaults);
    over https:// the lookup is answered, and the runtime's own token is the one sent."""
    from tests.test_runtime_http import host_address

    host = host_address()
    body = bundle(_entry(_key("tiles", N=64), TUNED, _live_fp()))
    plain = servers(host=host, body=body)
    with caplog.at_level(logging.WARNING, logger="tuner.runtime"):
        _config_url(monkeypatch, live_env, plain.url, TUNER_API_TOKEN=API_TOKEN, TUNER_MISS_FLUSH_S="3600")
        for n in (64, 100):
            assert runtime.explain("tiles", N=n, dtype="float32").level == "default"
        runtime.flush_misses()
    (warning,) = _runtime_warnings(caplog)
    assert f"refusing to send the token over plain http:// to {host}" in warning and "https://" in warning
    assert plain.requests == []

    context, ca = _tls(tmp_path, host)
    secure = servers(host=host, body=body, tls=context)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    _config_url(monkeypatch, live_env, secure.url, TUNER_API_TOKEN=API_TOKEN, TUNER_RUNTIME_TOKEN=RUNTIME_TOKEN)
    answer = runtime.explain("tiles", N=64, dtype="float32")
    assert (answer.level, dict(answer.config)) == ("exact", TUNED), answer
    assert [r[2].get("authorization") for r in secure.requests] == [f"Bearer {RUNTIME_TOKEN}"]


def test_the_runtime_keeps_its_files_to_this_user(live_env, monkeypatch, servers, tmp_path):  # noqa: F811
    """A TUNER_HOME the runtime creates is 0700; misses.jsonl and the config server's copy 0600."""
    served = servers(body=bundle(_entry(_key("tiles", N=64), TUNED, _live_fp())))
    home = tmp_path / "home"
    monkeypatch.setenv("TUNER_HOME", str(home))
    _config_url(monkeypatch, live_env, served.url)
    assert runtime.lookup("tiles", N=64, dtype="float32") == TUNED
    (copy,) = (home / "config-url").iterdir()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (home, home / "config-url", copy)}
    assert modes == {"home": 0o700, "config-url": 0o700, copy.name: 0o600}

    other = tmp_path / "bundle-home"
    (tmp_path / "b.json").write_bytes(bundle(_entry(_key("tiles", N=64), TUNED, _live_fp())))
    monkeypatch.delenv("TUNER_CONFIG_URL")
    monkeypatch.setenv("TUNER_HOME", str(other))
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(tmp_path / "b.json"))
    monkeypatch.setenv("TUNER_MISS_FLUSH_S", "3600")
    live_env()
    assert runtime.explain("tiles", N=100, dtype="float32").level == "nearest"
    assert runtime.flush_misses() == 1
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (other, other / "misses.jsonl")}
    assert modes == {"bundle-home": 0o700, "misses.jsonl": 0o600}
