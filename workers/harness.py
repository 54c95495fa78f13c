"""The parent side of the benchmark: one persistent child process per device, restarted after a
crash or a hang, so a bad kernel costs one trial and never the worker.
"""
from __future__ import annotations

import collections
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time

from workers.messages import TrialRequest, TrialResult

STARTUP_TIMEOUT_S = 180.0  # importing torch and triton on a busy 2-core machine is slow


class _Child:
    def __init__(self, device: str):
        env = dict(os.environ)
        if device == "cpu":
            env["TRITON_INTERPRET"] = "1"  # must precede the child's first triton import
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        self.proc = subprocess.Popen([sys.executable, "-m", "workers.bench_child"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                     start_new_session=True)
        self.stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            self.stderr.append(raw.decode(errors="replace").rstrip())

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

    def death(self) -> str:
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.returncode
        how = f"killed by signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
        tail = " | ".join(list(self.stderr)[-3:])
        return f"benchmark process died ({how}){': ' + tail if tail else ''}"


class Harness:
    """Runs TrialRequests in isolated child processes; `run` never raises for a kernel's fault."""

    def __init__(self) -> None:
        self._children: dict[str, _Child] = {}
        self._started: set[str] = set()
        self.restarts = 0

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _child(self, device: str) -> _Child:
        child = self._children.get(device)
        if child is not None and child.proc.poll() is None:
            return child
        child = _Child(device)
        child.send({"op": "ping"})
        line = child.read_line(STARTUP_TIMEOUT_S)
        if not line:
            reason = child.death() if line == b"" else "no answer to ping"
            child.kill()
            raise RuntimeError(f"benchmark process for {device} failed to start: {reason}")
        if device in self._started:
            self.restarts += 1
        self._started.add(device)
        self._children[device] = child
        return child

    def run(self, req: TrialRequest) -> TrialResult:
        child = self._child(req.device)
        try:
            child.send({"op": "trial", "trial": req.to_json()})
        except (BrokenPipeError, OSError):
            self._children.pop(req.device, None)
            return TrialResult.failed("crashed", child.death(), req.config)
        line = child.read_line(req.timeout_s)
        if line is None:
            child.kill()
            self._children.pop(req.device, None)
            return TrialResult.failed("timeout", f"no result within {req.timeout_s:g} s; "
                                                 "benchmark process killed and restarted", req.config)
        if line == b"":
            self._children.pop(req.device, None)
            return TrialResult.failed("crashed", child.death(), req.config)
        try:
            return TrialResult.from_json(json.loads(line))
        except ValueError as exc:
            child.kill()
            self._children.pop(req.device, None)
            return TrialResult.failed("crashed", f"unreadable answer from benchmark process: {exc}", req.config)

    def close(self) -> None:
        for child in self._children.values():
            try:
                child.proc.stdin.close()
                child.proc.wait(timeout=5)
            except Exception:
                pass
            child.kill()
        self._children.clear()
