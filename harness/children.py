"""Child processes that speak one JSON object per line on stdin and stdout: the benchmark
process (harness/benchmark.py), the compile processes (harness/compile_pool.py) and the build
processes (harness/cross_build.py). Started in a new session so a kill takes their
grandchildren (ptxas, a compiler) too; their stderr is kept for the error message of a crash,
and a child that stopped answering can be asked where it is stuck.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)
STARTUP_TIMEOUT_S = 180.0  # importing torch and triton on a busy 2-core machine is slow


_ROLES = {"harness.compile_pool": "compile process", "harness.cross_build": "build process"}


class Child:
    """A child process speaking one JSON object per line on its stdin and stdout."""

    def __init__(self, device: str, module: str = "harness.benchmark", env: dict[str, str] | None = None):
        # no TUNER_ setting reaches a child: the parent hands over what it needs (the kernel
        # modules, in the ping), and third-party kernel code never sees database or broker URLs
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}, **(env or {})}
        if device == "cpu":
            env["TRITON_INTERPRET"] = "1"  # must precede the child's first triton import
        else:
            env.pop("TRITON_INTERPRET", None)  # inherited from a CPU setup, it would run GPU kernels interpreted
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        self.role = _ROLES.get(module, "benchmark process")
        self.proc = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                     start_new_session=True)
        # room for a stack dump (see where()) on top of a fatal error's last lines
        self.stderr: collections.deque[str] = collections.deque(maxlen=400)
        self.lines = 0  # lines read from stderr so far
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            self.stderr.append(raw.decode(errors="replace").rstrip())
            self.lines += 1

    def send(self, msg: dict) -> None:
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()

    def read_line(self, timeout: float) -> bytes | None:
        """One protocol line; None on timeout; b"" when the child is gone."""
        end = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            if left <= 0 or not self._sel.select(left):
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return b""
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self._sel.close()

    def close(self) -> None:
        """End it politely (stdin closed), then for sure."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except Exception:
            pass
        self.kill()

    def where(self, wait_s: float = 2.0) -> str:
        """Where a child that stopped answering is stuck: it dumps its Python stack to stderr on
        SIGUSR1 (benchmark.serve registers faulthandler for it). The innermost frames of the
        thread it was running, innermost first; "" when no dump arrives within wait_s."""
        before = self.lines
        try:
            os.kill(self.proc.pid, signal.SIGUSR1)
        except ProcessLookupError:
            return ""
        end, seen, quiet_since = time.monotonic() + wait_s, before, time.monotonic()
        while time.monotonic() < end:
            time.sleep(0.05)
            if self.lines != seen:
                seen, quiet_since = self.lines, time.monotonic()
            elif seen > before and time.monotonic() - quiet_since > 0.2:
                break  # the dump has stopped growing
        new = list(self.stderr)[-(self.lines - before):] if self.lines > before else []
        return " <- ".join(_current_frames(new)[:4])

    def kill_stuck(self) -> str:
        """Kill a child that stopped answering, first asking where it was stuck; says both."""
        at = self.where()
        self.kill()
        return f"{self.role} killed and restarted{'; it was at ' + at if at else ''}"

    def death(self) -> str:
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.returncode
        # the last lines (a fatal error's own report) may still be in the pipe: read them first;
        # bounded, since a grandchild in the session could hold stderr open
        self._drainer.join(timeout=2.0)
        how = f"killed by signal {_signal_name(-rc)}" if rc < 0 else f"exit status {rc}"
        tail = " | ".join(list(self.stderr)[-3:])
        return f"{self.role} died ({how}){': ' + tail if tail else ''}"


def _current_frames(lines: list[str]) -> list[str]:
    """The frames of a faulthandler dump's "Current thread" (else its first thread), innermost
    first, each as 'timing.py:135 in once'."""
    heads = [i for i, line in enumerate(lines) if line.endswith("(most recent call first):")]
    if not heads:
        return []
    head = next((i for i in heads if lines[i].startswith("Current thread")), heads[0])
    frames = []
    for line in lines[head + 1:]:
        text = line.strip()
        if not text.startswith('File "'):
            break
        path, _, rest = text[len('File "'):].partition('", line ')
        frames.append(f"{os.path.basename(path)}:{rest}")
    return frames


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name
        return str(number)


def spawn_children(device: str, module: str, n: int, env: dict[str, str] | None = None) -> list[Child]:
    """n children started and pinged, not waited for: their imports run while the caller goes on.
    env: added to theirs. `await_children` collects them."""
    from search_spaces import registry

    children = [Child(device, module, env) for _ in range(n)]
    for child in children:
        try:
            child.send({"op": "ping", "device": device, "kernel_modules": list(registry.KERNELS.modules)})
        except (BrokenPipeError, OSError):
            pass
    return children


def await_children(device: str, children: list[Child]) -> list[Child]:
    """The spawned children that answered their ping; the others are killed. Raises RuntimeError
    when none did."""
    end = time.monotonic() + STARTUP_TIMEOUT_S
    ok, reasons = [], []
    for child in children:
        line = child.read_line(max(0.0, end - time.monotonic()))
        if line:
            ok.append(child)
            continue
        reasons.append(child.death() if line == b"" else "no answer to ping")
        child.kill()
    if not ok:
        raise RuntimeError(f"{children[0].role} for {device} failed to start: {reasons[0]}")
    if reasons:
        log.warning("%d of %d %ses for %s failed to start: %s", len(reasons), len(children), children[0].role,
                    device, reasons[0])
    return ok


def start_children(device: str, module: str, n: int, env: dict[str, str] | None = None) -> list[Child]:
    """n children started together (their imports overlap), each having answered a ping."""
    return await_children(device, spawn_children(device, module, n, env))
