"""Compiling candidates in parallel while the device benchmarks others.

A few persistent compile processes (`python -m harness.compile_pool`), each answering one JSON
line per request: the kernel's `compile` hook builds the configuration for the device, Triton
writes the binary to its on-disk cache (shared through the environment with the benchmark
process, whose first launch then loads it instead of compiling), and the answer carries the
binary's identity, so that configurations that build the same binary are benchmarked once.

Processes, not threads: compiling holds the GIL in places and a compiler crash must not take
the worker down. Not `ProcessPoolExecutor`: it pickles arguments and results, and messages
here are JSON only (the request is a TrialRequest's JSON, the answer a plain object). The
parent's threads only wait on pipes.

Answers: {"status": "ok", "binary": str | None, "compile_s": float} or {"status": s,
"message": m} with s one of invalid, compile_error, out_of_resources, crashed, timeout.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from harness.protocol import TrialRequest

log = logging.getLogger(__name__)

_FAIL = ("invalid", "compile_error", "out_of_resources", "crashed", "timeout")


def default_workers() -> int:
    """Leave a core to the benchmark process and one to the worker; at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 2))


# ---- the compile process --------------------------------------------------------------
def compile_one(req: TrialRequest) -> dict[str, Any]:
    from harness.benchmark import Refused, classify_error, device_target, error_message, resolve, use_device

    try:
        spec, key = resolve(req)
    except Refused as r:
        return {"status": r.status, "message": r.message}
    try:
        use_device(req.device)
        target = device_target(req.device)
    except Exception as exc:
        return {"status": "crashed", "message": f"compile process cannot use {req.device}: {error_message(exc)}"}
    reason = spec.check(req.config, key, target)
    if reason is not None:
        return {"status": "invalid", "message": reason}
    t = time.perf_counter()
    try:
        binary = spec.compile(req.config, key, target)
    except Exception as exc:
        return {"status": classify_error(exc), "message": error_message(exc)}
    return {"status": "ok", "binary": None if binary is None else str(binary), "compile_s": time.perf_counter() - t}


def main() -> None:
    from harness.benchmark import serve
    serve(compile_one, lambda why: {"status": "invalid", "message": why})


# ---- the parent side ------------------------------------------------------------------
def _answer(line: bytes) -> dict[str, Any]:
    d = json.loads(line)
    if not isinstance(d, dict) or d.get("status") not in ("ok", *_FAIL):
        raise ValueError(f"unexpected answer {line[:200]!r}")
    if d["status"] == "ok":
        if not (d.get("binary") is None or isinstance(d["binary"], str)):
            raise ValueError("binary must be a string or null")
        if not isinstance(d.get("compile_s"), (int, float)):
            raise ValueError("compile_s must be a number")
    elif not isinstance(d.get("message"), str):
        raise ValueError("message must be a string")
    return d


class CompilePool:
    """`workers` compile processes for one device; `submit(req)` returns a Future of the answer.

    A process that crashes or exceeds the request's timeout is killed and replaced on its next
    use; its request is answered crashed or timeout (the caller decides what that means).
    """

    def __init__(self, device: str, workers: int):
        from harness.children import start_children

        self.device = device
        self.restarts = 0
        children = start_children(device, "harness.compile_pool", workers)  # raises when none starts
        self._idle: "queue.Queue" = queue.Queue()
        for child in children:
            self._idle.put(child)
        self._all = list(children)
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(max_workers=len(children), thread_name_prefix="precompile")

    @property
    def size(self) -> int:
        return len(self._all)

    def submit(self, req: TrialRequest) -> "Future[dict[str, Any]]":
        return self._threads.submit(self._compile, req)

    def _compile(self, req: TrialRequest) -> dict[str, Any]:
        child = self._idle.get()
        try:
            if child.proc.poll() is not None:  # it died or was killed on an earlier request
                child = self._replace(child)
            try:
                child.send({"op": "compile", "trial": req.to_json()})
            except (BrokenPipeError, OSError):
                return {"status": "crashed", "message": child.death()}
            line = child.read_line(req.timeout_s)
            if line is None:
                return {"status": "timeout",
                        "message": f"compiling took longer than {req.timeout_s:g} s; {child.kill_stuck()}"}
            if line == b"":
                return {"status": "crashed", "message": child.death()}
            try:
                return _answer(line)
            except ValueError as exc:
                child.kill()
                return {"status": "crashed", "message": f"unreadable answer from compile process: {exc}"}
        except RuntimeError as exc:  # no replacement process would start; the next request retries
            return {"status": "crashed", "message": str(exc)}
        finally:
            self._idle.put(child)  # the slot stays, alive or dead

    def _replace(self, dead):
        from harness.children import start_children

        dead.kill()
        (child,) = start_children(self.device, "harness.compile_pool", 1)
        with self._lock:
            self.restarts += 1
            self._all = [c for c in self._all if c is not dead] + [child]
        return child

    def close(self) -> None:
        # a thread still waiting on a child (only after an interrupted run_many) sees it die below
        self._threads.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            children, self._all = self._all, []
        for child in children:
            child.close()


if __name__ == "__main__":
    main()
