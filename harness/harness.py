"""The parent side of the benchmark: one persistent child process per device, restarted after a
crash or a hang, so a bad kernel costs one trial and never the worker.

`Harness.run` measures one request. `Harness.stream` measures requests as a caller hands them
over, keeping a few in flight: on a GPU a pool of compile processes (harness/compile_pool.py)
builds them into Triton's on-disk cache while the benchmark process measures what is already
built, and configurations that build the same binary are measured once. `Harness.run_many`
is a stream of a fixed list, answered in the order of the requests.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Callable, Iterator, TypeVar

from harness.benchmark import poisoned
from harness.children import Child, await_children, spawn_children
from harness.protocol import TrialRequest, TrialResult
from keys import canonical_json, config_hash

log = logging.getLogger(__name__)
T = TypeVar("T")


class Harness:
    """Runs TrialRequests in isolated child processes; `run` never raises for a kernel's fault.

    `stream` and `run_many` run many: on a GPU they compile in parallel compile processes while
    the benchmark process measures the configurations already built, and benchmark once each
    distinct binary (and on the interpreter each distinct request).
    """

    def __init__(self, compile_workers: int | None = None, precompile: bool | None = None) -> None:
        """compile_workers: the size of each device's compile pool (default: cores - 2, at most 8).
        precompile: None compiles ahead on GPUs only (the interpreter has nothing to compile);
        True forces the pool on the CPU too (tests drive it there); False never uses it."""
        self._children: dict[str, Child] = {}
        self._spawned: dict[str, Child] = {}  # benchmark processes started, their ping not yet read
        self._started: set[str] = set()
        self._pools: dict[str, object] = {}
        self._compile_workers = compile_workers
        self._precompile = precompile
        self.restarts = 0
        self.benchmarked = 0  # trials sent to a benchmark process
        self.benchmark_s = 0.0  # seconds from sending them to reading their answers
        self.first_launch_s = 0.0  # of which in their first launches (compiling or loading the binary)

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, device: str, precompile: bool = True) -> None:
        """Start the device's benchmark process (and compile pool, where a stream would use one)
        now rather than on the first trial: startup (importing torch and triton, opening the
        device) is seconds. The two start side by side."""
        if precompile:
            self._pool(device)  # spawns the benchmark process first
        self._child(device)

    def _spawn(self, device: str) -> None:
        """Start the device's benchmark process without waiting for it, unless one is up or coming."""
        child = self._children.get(device)
        if device not in self._spawned and (child is None or child.proc.poll() is not None):
            (self._spawned[device],) = spawn_children(device, "harness.benchmark", 1)

    def _child(self, device: str) -> Child:
        child = self._children.get(device)
        if child is not None and child.proc.poll() is None:
            return child
        self._spawn(device)
        (child,) = await_children(device, [self._spawned.pop(device)])
        if device in self._started:
            self.restarts += 1
        self._started.add(device)
        self._children[device] = child
        return child

    def width(self, device: str) -> int:
        """How many trials to keep in flight on device: the compile pool's size where
        configurations are compiled ahead (the pool is started here), else 1."""
        pool = self._pool(device)
        return pool.size if pool is not None else 1

    def _pool(self, device: str):
        """The device's compile pool, started on first use; None where nothing is compiled
        ahead (the interpreter, unless forced) or the pool would not start (then never retried)."""
        wanted = self._precompile if self._precompile is not None else device != "cpu"
        if not wanted:
            return None
        if device not in self._pools:
            from harness.compile_pool import CompilePool, default_workers

            self._spawn(device)  # the benchmark process is needed next: its startup overlaps the pool's
            try:
                self._pools[device] = CompilePool(device, self._compile_workers or default_workers())
            except RuntimeError as exc:
                log.warning("compiling ahead is off for %s: %s", device, exc)
                self._pools[device] = None
        return self._pools[device]

    def run(self, req: TrialRequest) -> TrialResult:
        sent = self._send(req)
        return sent if isinstance(sent, TrialResult) else self._receive(sent)

    def _send(self, req: TrialRequest) -> "_Sent | TrialResult":
        """Hand req to the device's benchmark process; the result at once if that failed."""
        child = self._child(req.device)
        self.benchmarked += 1
        try:
            child.send({"op": "trial", "trial": req.to_json()})
        except (BrokenPipeError, OSError):
            self._children.pop(req.device, None)
            return TrialResult.failed("crashed", child.death(), req.config)
        return _Sent(child, req, time.monotonic())

    def _receive(self, sent: "_Sent") -> TrialResult:
        """The answer to a sent request, within its timeout counted from when it was sent."""
        child, req = sent.child, sent.req
        try:
            line = child.read_line(max(0.0, sent.at + req.timeout_s - time.monotonic()))
        finally:
            self.benchmark_s += time.monotonic() - sent.at
        if line is None:
            stuck = child.kill_stuck()
            self._children.pop(req.device, None)
            return TrialResult.failed("timeout", f"no result within {req.timeout_s:g} s; {stuck}", req.config)
        if line == b"":
            self._children.pop(req.device, None)
            return TrialResult.failed("crashed", child.death(), req.config)
        try:
            result = TrialResult.from_json(json.loads(line))
        except ValueError as exc:
            child.kill()
            self._children.pop(req.device, None)
            return TrialResult.failed("crashed", f"unreadable answer from benchmark process: {exc}", req.config)
        if poisoned(result.status, result.message):
            # the child exits after this answer; tearing down a CUDA context takes a while, and a
            # trial sent meanwhile would meet a closing pipe and be reported as a crash of its own
            child.close()
            self._children.pop(req.device, None)
        self.first_launch_s += result.compile_s or 0.0
        return result

    def run_many(self, requests: list[TrialRequest], early_stop_factor: float | None = None,
                 precompile: bool = True) -> list[TrialResult]:
        """The results of requests, in their order: `stream` with all of them in flight at once."""
        pending = iter(enumerate(requests))
        results: list[TrialResult | None] = [None] * len(requests)
        with contextlib.closing(self.stream(lambda: next(pending, None), len(requests), early_stop_factor,
                                            precompile)) as answers:
            for i, result in answers:
                results[i] = result
        return results  # type: ignore[return-value]  # the stream answered every request

    def stream(self, take: Callable[[], tuple[T, TrialRequest] | None], depth: int,
               early_stop_factor: float | None = None, precompile: bool = True) -> Iterator[tuple[T, TrialResult]]:
        """Measure requests as they come, yielding (tag, result) as each is measured.

        `take()` gives the next (tag, request), or None when there are no more. Up to `depth`
        requests are in flight; another is taken each time one is answered, after the caller has
        seen that answer, so a search proposes its next configuration knowing it. Before a
        result is yielded, the next request that is ready is already handed to the benchmark
        process, so it measures while the caller stores, tells and proposes.

        With a compile pool (GPUs; `precompile`) the requests in flight are built in parallel
        and each is benchmarked as soon as it is built, in the order the builds finish: the pool
        keeps compiling while the benchmark process measures, and one slow build holds up no
        other. A configuration the pool finds invalid, uncompilable, out of resources or too
        slow to compile is answered from there and never launched; one whose compile process
        crashed is still sent to the benchmark process, which decides.

        Requests that differ only in config (and early_stop_ms, timeout_s) and build the same
        binary, or on the interpreter are the same request, are benchmarked once: the others get
        the measured one's result with their own config and a note in the message.

        early_stop_factor: each request's early stop is tightened to this multiple of the best
        median measured so far in the stream (the search's rule).
        """
        first: dict[str, TrialResult] = {}  # dedup key -> its measurement
        best: float | None = None
        flight: dict[Future, tuple[T, TrialRequest]] = {}  # built or building, not yet benchmarked
        sent: _Sent | None = None  # the one in the benchmark process
        taking = True

        def plan(f: Future) -> tuple[TrialResult | None, TrialRequest, dict | None, str]:
            """For built f: (its result where it needs no benchmark, else None; the request to
            send, early stop tightened; the pool's answer where it built the binary; dedup key)."""
            _, req = flight[f]
            answer = f.result()
            if answer is not None and answer["status"] not in ("ok", "crashed"):
                return TrialResult.failed(answer["status"], answer["message"], req.config), req, None, ""
            binary = answer.get("binary") if answer is not None and answer["status"] == "ok" else None
            same = _dedup_key(req, binary)
            if same in first:
                prior = first[same]
                note = f"same compiled {'binary' if binary is not None else 'configuration'} as {prior.config}: " \
                       "measured once"
                return dataclasses.replace(prior, config=req.config,
                                           message="; ".join(m for m in (prior.message, note) if m)), req, None, ""
            if early_stop_factor is not None and best is not None:
                limit = best * early_stop_factor
                req = dataclasses.replace(req, early_stop_ms=min(limit, req.early_stop_ms or limit))
            return None, req, answer if binary is not None else None, same

        def send(f: Future, req: TrialRequest, built: dict | None, same: str) -> TrialResult | None:
            nonlocal sent
            out = self._send(req)
            if isinstance(out, TrialResult):
                return out
            sent = dataclasses.replace(out, tag=flight.pop(f)[0], built=built, same=same)
            return None

        try:
            while True:
                while taking and len(flight) + (sent is not None) < max(1, depth):
                    item = take()
                    if item is None:
                        taking = False
                        break
                    flight[self._build(item[1], precompile)] = item
                if sent is None:
                    if not flight:
                        return
                    if not any(f.done() for f in flight):
                        wait(flight, return_when=FIRST_COMPLETED)
                    f = next(f for f in flight if f.done())  # the earliest taken of those built
                    done, req, built, same = plan(f)
                    if done is None:
                        done = send(f, req, built, same)
                    if done is not None:
                        yield flight.pop(f)[0], done
                        continue
                measured, sent = sent, None
                result = self._receive(measured)
                if measured.built is not None and result.status == "ok":
                    # the launch loaded the binary the pool built: the compile time is the pool's
                    result = dataclasses.replace(result, compile_s=measured.built["compile_s"])
                if result.status == "ok" and result.median_ms is not None:
                    best = result.median_ms if best is None else min(best, result.median_ms)
                first[measured.same] = result
                for f in [f for f in flight if f.done()]:  # the next one in, before the caller's turn
                    done, req, built, same = plan(f)
                    if done is None:
                        send(f, req, built, same)  # if that fails it stays in flight: tried again next turn
                        break
                yield measured.tag, result
        finally:
            for f in flight:
                f.cancel()
            if sent is not None:  # abandoned mid-trial: its answer would be read as the next one's
                sent.child.kill()
                self._children.pop(sent.req.device, None)

    def _build(self, req: TrialRequest, precompile: bool) -> Future:
        """The pool's answer for req (None inside: nothing built ahead, the benchmark decides)."""
        pool = self._pool(req.device) if precompile else None
        if pool is not None:
            return pool.submit(req)
        return _answered(None)

    def close(self) -> None:
        for pool in self._pools.values():
            if pool is not None:
                pool.close()
        self._pools.clear()
        for child in (*self._children.values(), *self._spawned.values()):
            child.close()
        self._children.clear()
        self._spawned.clear()


@dataclasses.dataclass(frozen=True)
class _Sent:
    """A request in a benchmark process, and what the stream needs when its answer comes."""
    child: Child
    req: TrialRequest
    at: float  # time.monotonic() when sent: its timeout counts from here
    tag: object = None
    built: dict | None = None  # the pool's answer, where it built the binary
    same: str = ""  # its dedup key


def _answered(value) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


def _dedup_key(req: TrialRequest, binary: str | None) -> str:
    """What decides a measurement: the request without its config, stopping and timeout, and
    what the config builds (its binary where the pool built one, else the config itself)."""
    d = req.to_json()
    config = d.pop("config")
    d.pop("early_stop_ms")
    d.pop("timeout_s")
    d["built"] = ["binary", binary] if binary is not None else ["config", config_hash(config)]
    return canonical_json(d)
