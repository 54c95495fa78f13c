"""The runtime inside a model: it never raises for what the model did not get wrong, never
blocks a launch on a source that does not answer, and never holds a lock a warm hit needs.

The database that "accepts and never answers" is a real TCP listener: psycopg connects, sends
its first bytes and waits for a reply that never comes (libpq's connect timeout cannot go
below 2 s, so only the runtime's own deadline bounds the wait)."""
import logging
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.cli_helpers import ROOT, tuner_env
from tests.test_runtime import live_env  # noqa: F401  (the fixture)
from tuner import runtime


class SilentDatabase:
    """A TCP listener that accepts every connection and never sends a byte."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.accepted = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()

    def url(self) -> str:
        return f"postgresql+psycopg://tuner@127.0.0.1:{self.port}/tuner"

    def waiting_clients(self) -> int:
        """Connections whose client is still waiting for an answer (not closed by its side)."""
        open_ = 0
        for conn in self.conns:
            conn.setblocking(False)
            try:
                while conn.recv(4096):  # what the client sent while waiting
                    pass
            except BlockingIOError:
                open_ += 1  # nothing more to read, and no end of stream: still waiting
            except OSError:
                pass
        return open_

    def close(self):
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def silent_db():
    db = SilentDatabase()
    yield db
    db.close()


class StuckBundle:
    """A bundle file that is a named pipe: reading it blocks until the test writes the bundle, so
    the source hangs for as long as the test wants, whatever the timeouts."""

    def __init__(self, path, entries):
        import os

        self.path, self.entries = path, entries
        os.mkfifo(path)

    def release(self):
        import json
        import os

        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # nobody is reading it
            return
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"format": "tuner-bundle", "version": 1, "entries": self.entries}))


@pytest.fixture
def stuck_bundle(tmp_path, monkeypatch):
    from tests.test_runtime import _entry, _key, _live_fp

    bundle = StuckBundle(tmp_path / "stuck.json", [_entry(_key("tiles", N=100), {"BLOCK": 128, "num_warps": 4},
                                                           _live_fp())])
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(bundle.path))
    yield bundle
    bundle.release()


def _in_thread(fn):
    out, thread = [], threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def test_a_miss_never_waits_on_a_source_that_hangs(live_env, monkeypatch, stuck_bundle):  # noqa: F811
    """A launch waits at most the deadline for its answer, then serves the default; another
    thread's miss meanwhile is not queued behind a lock; the answer is used once it comes. (The
    old runtime held one lock across the read: both lookups would hang with the source.)"""
    deadline_s = 0.2
    monkeypatch.setenv("TUNER_RUNTIME_DEADLINE_MS", str(int(deadline_s * 1000)))
    live_env()
    runtime.lookup("tiles", N=64, dtype="float16")  # the process's state made (settings, probe), without the source

    def timed():
        t0 = time.monotonic()
        return runtime.lookup("tiles", N=100, dtype="float32"), time.monotonic() - t0

    first, got = _in_thread(timed)
    first.join(60)
    assert not first.is_alive(), "a lookup hung with its source"
    config, waited_s = got[0]
    assert config == {"BLOCK": 16, "num_warps": 1}
    # a generous bound (a loaded machine), which a wait of many deadlines still fails
    assert waited_s < 10 * deadline_s, f"the launch waited {waited_s:.2f} s for a deadline of {deadline_s} s"
    assert "waiting for bundle" in runtime.explain("tiles", N=100, dtype="float32").reason
    second, other = _in_thread(lambda: runtime.lookup("tiles", N=200, dtype="float32"))
    second.join(60)
    assert not second.is_alive(), "another thread's miss queued behind the hung one"
    assert other[0] == {"BLOCK": 16, "num_warps": 1}
    stuck_bundle.release()  # the source answers at last
    assert runtime.settle(60)
    assert runtime.lookup("tiles", N=100, dtype="float32") == {"BLOCK": 128, "num_warps": 4}


def test_a_warm_hit_while_another_thread_is_stuck_in_a_miss(live_env, monkeypatch, stuck_bundle):  # noqa: F811
    monkeypatch.setenv("TUNER_RUNTIME_DEADLINE_MS", "60000")  # the stuck thread waits for its answer
    live_env()
    warm = runtime.lookup("tiles", N=64, dtype="float16")  # not a dtype of tiles: served without the source
    stuck, _ = _in_thread(lambda: runtime.lookup("tiles", N=100, dtype="float32"))
    for _ in range(1000):
        assert runtime.lookup("tiles", N=64, dtype="float16") is warm
    assert stuck.is_alive()
    stuck_bundle.release()
    stuck.join(60)


def test_a_database_that_accepts_and_never_answers(live_env, monkeypatch, silent_db):  # noqa: F811
    """The same with PostgreSQL's driver: the lookup returns the default while its question is still
    connecting, and once the connect timeout ends it the default is marked unreachable (asked
    again later, never cached for good)."""
    monkeypatch.setenv("TUNER_DB_URL", silent_db.url())
    monkeypatch.setenv("TUNER_RUNTIME_DEADLINE_MS", "100")
    live_env()
    first = runtime.explain("matmul", M=64, N=64, K=64, dtype="float32")
    assert first.level == "default" and "waiting for database" in first.reason
    assert silent_db.accepted.wait(30) and silent_db.waiting_clients() >= 1
    assert runtime.settle(60)
    late = runtime.explain("matmul", M=64, N=64, K=64, dtype="float32")
    assert late.level == "default" and late.unreachable and "unreachable" in late.reason


def test_what_the_model_did_not_get_wrong_never_raises(live_env, monkeypatch, caplog):  # noqa: F811
    """Bad settings, an unsupported dtype, a dim of 0 and a float8 tensor: the default, one
    warning per cause however often it is looked up."""
    import torch

    from search_spaces import matmul
    from tuner.runtime import tuned

    monkeypatch.setenv("TUNER_STALL_S", "two minutes")
    monkeypatch.setenv("TUNER_RUNTIME_DEADLINE_MS", "soon")
    monkeypatch.setenv("TUNER_FINGERPRINT_OVERRIDE", "driver")
    live_env()
    kernel = tuned("matmul", key=["M", "N", "K"])(matmul.matmul_kernel)
    a = torch.zeros(16, 16).to(torch.float8_e4m3fn)
    with caplog.at_level(logging.WARNING, logger="tuner.runtime"):
        for _ in range(3):
            cfg = runtime.lookup("matmul", M=64, N=64, K=64, dtype="float32")
            assert runtime.lookup("matmul", M=64, N=64, K=64, dtype="float8_e4m3fn") == \
                   runtime.lookup("matmul", M=64, N=64, K=64, dtype="float32")
            assert runtime.lookup("matmul", M=0, N=64, K=64, dtype="float16")["BLOCK_M"] >= 16
            assert kernel.config_for((a, a, a, 16, 16, 16), {}) == runtime.lookup("matmul", M=16, N=16, K=16,
                                                                                dtype="float32")
        runtime.settle(30)
    assert cfg
    messages = [r.message for r in caplog.records]
    for cause in ("TUNER_STALL_S='two minutes'", "TUNER_RUNTIME_DEADLINE_MS='soon'", "TUNER_FINGERPRINT_OVERRIDE",
                  "dtype float8_e4m3fn", "M=0"):
        assert sum(cause in m for m in messages) == 1, (cause, messages)


def test_a_programming_error_is_one_clear_lookup_error(live_env):  # noqa: F811
    with pytest.raises(LookupError, match="unknown kernel 'nope'"):
        runtime.lookup("nope", M=1)
    with pytest.raises(LookupError, match="matmul is looked up by M, N, K and dtype; this lookup has no K"):
        runtime.lookup("matmul", M=64, N=64, dtype="float32")
    with pytest.raises(LookupError, match="M='abc' is not an integer"):
        runtime.lookup("matmul", M="abc", N=64, K=64, dtype="float32")
    from tests.kernels.tutorial import softmax_kernel
    from tuner.runtime import tuned

    with pytest.raises(ValueError, match="names no argument of softmax_kernel"):
        tuned("tutorial_softmax", key=["M", "N"])(softmax_kernel)  # its arguments are n_rows, n_cols


BAD_MODULES = """
import json
from tuner import runtime
cfg = runtime.lookup("matmul", M=64, N=64, K=64, dtype="float32")
try:
    runtime.lookup("ext_axpy", N=64, dtype="float32")
    user = "served"
except LookupError as exc:
    user = str(exc)
print(json.dumps({"cfg": dict(cfg), "user": user}))
"""


def test_a_bad_kernel_module_never_stops_a_builtin_kernel(tmp_path):
    """With a bad TUNER_KERNEL_MODULES (and a bad setting) the built-in matmul is served; a user
    kernel the registry cannot reach is one clear LookupError naming the module."""
    env = tuner_env(tmp_path, TUNER_DEVICE="cpu", TUNER_KERNEL_MODULES="no_such.module,tests.kernels.external",
                    TUNER_STALL_S="two minutes")
    done = subprocess.run([sys.executable, "-c", BAD_MODULES], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    import json

    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["cfg"]["BLOCK_M"] and "no_such.module" in out["user"]
