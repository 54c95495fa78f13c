"""The benchmark child process: runs one trial per JSON line it reads, answers one JSON line.

It is the only process that launches kernels, so a kernel that crashes or hangs takes this
process down (the parent restarts it) and never the worker. Its real stdout carries only the
protocol; fd 1 is pointed at stderr so a kernel's prints cannot corrupt it.
"""
from __future__ import annotations

import faulthandler
import functools
import json
import os
import signal
import sys
import time
from collections import OrderedDict
from typing import Any, Callable

from harness.protocol import DEFAULT_ROUTING, TrialRequest, TrialResult
from keys import canonical_json

_inputs: "OrderedDict[tuple, tuple[Any, Any]]" = OrderedDict()
_targets: dict[str, Any] = {}
# errors after which this process's CUDA context cannot be trusted: answer, then exit
_POISON = ("illegal memory access", "unspecified launch failure", "device-side assert", "misaligned address")
_RESOURCE_TEXT = ("out of memory", "out of resource", "too many resources requested")


def device_target(device: str):
    if device not in _targets:
        from devices.probe import probe
        _targets[device] = probe(device)[0].target
    return _targets[device]


def classify_error(exc: BaseException) -> str:
    try:
        from triton.compiler.errors import CompilationError
        from triton.runtime.errors import OutOfResources
    except ImportError:  # pragma: no cover - triton is a dependency
        CompilationError = OutOfResources = ()  # type: ignore[assignment]
    if isinstance(exc, OutOfResources):
        return "out_of_resources"
    text = str(exc).lower()
    # torch's CUDA OOM, and the driver's launch refusal (too many registers or threads a block)
    if type(exc).__name__ == "OutOfMemoryError" or any(s in text for s in _RESOURCE_TEXT):
        return "out_of_resources"
    if isinstance(exc, CompilationError):
        return "compile_error"
    cause = exc.__cause__
    if type(exc).__name__ == "InterpreterError" and isinstance(cause, (NameError, SyntaxError, TypeError,
                                                                        AttributeError, CompilationError)):
        # the interpreter has no compile step: what a GPU backend rejects at compile time
        # (an undefined name, a bad tl call) surfaces here wrapped in InterpreterError
        return "compile_error"
    return "crashed"


def error_message(exc: BaseException) -> str:
    """"Type: the line that says what went wrong". Triton's compile errors print the source
    excerpt first and the reason last; every other error (torch's CUDA errors among them, which
    follow the reason with four lines of debugging advice) leads with the reason."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    compile_error = classify_error(exc) == "compile_error"
    reason = (lines[-1] if compile_error else lines[0]) if lines else ""
    return f"{type(exc).__name__}: {reason}"[:1000]


def _inputs_for(spec, key, device: str, seed: int, keep: int = 4, reference: bool = True,
                routing: str = DEFAULT_ROUTING, signature: dict | None = None):
    """(inputs, reference or None) for one seed, cached: the last `keep` input sets stay. What a
    routing or a launch signature means for the inputs is the kernel's (`KernelSpec.trial_inputs`)."""
    k = (key.kernel, key.version, key.stable_hash, device, seed, routing,
         None if signature is None else canonical_json(signature))
    if k not in _inputs:
        _inputs[k] = (spec.trial_inputs(key, device, seed, routing, signature), None)
    _inputs.move_to_end(k)
    inputs, ref = _inputs[k]
    if reference and ref is None:
        ref = spec.reference(inputs)
        _inputs[k] = (inputs, ref)
    while len(_inputs) > max(4, keep):
        _inputs.popitem(last=False)
    return inputs, ref


def _sync(device: str) -> None:
    if device != "cpu":
        import torch
        torch.cuda.synchronize()


def use_device(device: str) -> None:
    """Make the trial's GPU the current one: Triton launches, events and graphs go to it."""
    if device != "cpu":
        import torch
        torch.cuda.set_device(torch.device(device))


def interpreted_on_gpu(device: str) -> str | None:
    """Why a GPU trial cannot run here, when Triton's interpreter is on in this process: a kernel
    module (or anything it imports) that set TRITON_INTERPRET=1 on import turns every @triton.jit
    decorated after it into an interpreted function, which runs on GPU tensors through host
    copies, thousands of times slower, and would be timed as a GPU kernel."""
    if device == "cpu":
        return None
    import triton

    if not triton.knobs.runtime.interpret:
        return None
    return (f"TRITON_INTERPRET=1 is set in the process running {device} trials (a kernel module set it "
            "on import?): its kernels would run in the Triton interpreter; unset it for GPU workers")


class Refused(Exception):
    """A request answered without running it: its status and message."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def resolve(req: TrialRequest):
    """The request's (kernel spec, key), or Refused where it cannot run in this process: an
    unknown kernel or malformed key, a kernel changed since the study began, or a GPU request in
    a process that would interpret its kernels. The benchmark and compile processes both ask."""
    from search_spaces import registry
    from keys import SpecError, TuningKey

    try:
        spec = registry.get(req.kernel)
        key = TuningKey.from_json(req.key)
    except (SpecError, KeyError, TypeError, ValueError) as exc:
        raise Refused("invalid", f"bad request: {exc}") from None
    if key.version != spec.version:
        raise Refused("invalid", f"kernel changed since the study was created "
                                 f"(study {key.version}, code {spec.version})")
    why = interpreted_on_gpu(req.device)
    if why is not None:
        raise Refused("crashed", why)
    return spec, key


def run_trial(req: TrialRequest) -> TrialResult:
    from harness.timing import summarize, time_cpu, time_cuda

    config = req.config
    try:
        spec, key = resolve(req)
    except Refused as r:
        return TrialResult.failed(r.status, r.message, config)
    try:
        target = device_target(req.device)
    except Exception as exc:
        return TrialResult.failed("crashed", f"cannot open {req.device}: {error_message(exc)}", config)
    if target.arch != req.arch:
        # a message routed to the wrong device class: its checks were for other limits
        return TrialResult.failed("invalid", f"request for arch {req.arch} reached a {target.arch} device "
                                             f"({req.device})", config)
    reason = spec.check(config, key, target)
    if reason is not None:
        return TrialResult.failed("invalid", reason, config)
    rotate = max(1, req.rotate_buffers)
    try:
        use_device(req.device)
        inputs, ref = _inputs_for(spec, key, req.device, req.seed, keep=rotate, routing=req.routing,
                                  signature=req.signature)
        # more input sets (seeds seed+1 ...), made the same way: the output is checked on the first
        sets = [inputs] + [_inputs_for(spec, key, req.device, req.seed + j, keep=rotate, reference=False,
                                       routing=req.routing, signature=req.signature)[0] for j in range(1, rotate)]
    except Exception as exc:
        return TrialResult.failed("crashed", f"making inputs failed: {error_message(exc)}", config)

    def launch():
        return spec.launch(config, inputs)

    try:
        t = time.perf_counter()
        out = launch()
        _sync(req.device)
        compile_s = time.perf_counter() - t
    except Exception as exc:
        return TrialResult.failed(classify_error(exc), error_message(exc), config)
    import torch

    atol, rtol = spec.tolerances.get(key.dtype, (1e-3, 1e-3))
    outs, refs = (out, ref) if isinstance(out, (tuple, list)) else ((out,), (ref,))
    err = 0.0
    for o, r in zip(outs, refs):
        o32, r32 = o.float(), r.float()
        if o32.shape != r32.shape:
            return TrialResult.failed("wrong_result", f"output shape {tuple(o32.shape)} != {tuple(r32.shape)}", config)
        if not torch.isfinite(o32).all():
            return TrialResult.failed("wrong_result", "output has non-finite values", config)
        err = max(err, (o32 - r32).abs().max().item() if o32.numel() else 0.0)
        if not torch.allclose(o32, r32, atol=atol, rtol=rtol):
            return TrialResult(status="wrong_result", config=config, max_abs_err=err,
                               message=f"max abs error {err:.3g} beyond atol={atol}, rtol={rtol}")
    notes: list[str] = []
    launches = [functools.partial(spec.launch, config, s) for s in sets]
    if rotate > 1:
        notes.append(f"timed over {rotate} rotating input sets")
    graph = req.cuda_graph and req.device != "cpu"
    if req.cuda_graph and not graph:
        notes.append("cuda_graph ignored: the CPU interpreter has no CUDA graphs")

    def measure(reps: int, min_time_s: float):
        if req.device == "cpu":
            return time_cpu(launches, req.warmup, reps, min_time_s, req.early_stop_ms)
        return time_cuda(launches, req.warmup, reps, min_time_s, req.early_stop_ms, device=req.device,
                         cuda_graph=graph)

    try:
        samples, stopped = measure(req.reps, req.min_time_s)
        stats = summarize(samples)
        remeasured = 0
        if req.max_cv is not None and not stopped and stats[3] > req.max_cv:
            # a noisy measurement: once more with twice the repetitions; the steadier one stands
            again, again_stopped = measure(2 * max(1, req.reps), 2 * req.min_time_s)
            again_stats = summarize(again)
            remeasured = 1
            kept = "second" if again_stats[3] <= stats[3] else "first"
            notes.append(f"re-measured: cv {stats[3]:.3f} > max_cv {req.max_cv:g}; kept the {kept} "
                         f"measurement (cv {min(stats[3], again_stats[3]):.3f})")
            if kept == "second":
                samples, stopped, stats = again, again_stopped, again_stats
    except Exception as exc:
        return TrialResult.failed(classify_error(exc), error_message(exc), config)
    median, p20, p80, cv = stats
    return TrialResult(status="ok", median_ms=median, p20_ms=p20, p80_ms=p80, cv=cv, reps=len(samples),
                       compile_s=compile_s, max_abs_err=err, early_stopped=stopped, config=config,
                       remeasured=remeasured, message="; ".join(notes))


def preload() -> None:
    """Import what every trial needs before answering the first ping, so that startup (seconds
    of torch and triton imports) is paid when the process starts, not inside the first trial."""
    import importlib

    for name in ("torch", "triton", "search_spaces.registry", "harness.timing"):
        importlib.import_module(name)


def pong(msg: dict) -> dict:
    """The answer to a ping, the first message a child gets. It names the kernel modules the
    parent's registry was configured with (the child reads no settings of its own), and a ping
    naming a device also opens it (the CUDA context, the probe), so that is startup too. A device
    that fails here fails again, with its message, in a trial."""
    from search_spaces import registry

    modules = msg.get("kernel_modules")
    if isinstance(modules, list) and all(isinstance(m, str) for m in modules):
        registry.configure(modules)
    device = msg.get("device")
    if isinstance(device, str) and device.startswith("cuda"):
        try:
            use_device(device)
            device_target(device)
        except Exception as exc:
            print(f"opening {device} failed: {error_message(exc)}", file=sys.stderr)
    return {"op": "pong", "pid": os.getpid()}


def _trial(msg: dict) -> TrialRequest:
    return TrialRequest.from_json(msg.get("trial"))


def serve(handle: Callable[[Any], dict], bad: Callable[[str], dict],
          exit_after: Callable[[dict], bool] = lambda answer: False,
          parse: Callable[[dict], Any] = _trial) -> None:
    """The JSON-lines loop of a child process: one request per line in (`parse` reads it from the
    message, raising ValueError when it is malformed), one answer per line out. The real stdout
    carries only the protocol; fd 1 is pointed at stderr so that prints of a kernel, a compiler
    or a kernel module cannot corrupt it."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # a parent giving up on a request asks where this process is stuck (children.Child.where)
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    preload()
    for line in sys.stdin:
        try:
            msg = json.loads(line)
            if msg.get("op") == "ping":
                proto.write(json.dumps(pong(msg)) + "\n")
                continue
            req = parse(msg)
        except (ValueError, AttributeError) as exc:
            proto.write(json.dumps(bad(f"bad message: {exc}")) + "\n")
            continue
        answer = handle(req)
        proto.write(json.dumps(answer) + "\n")
        if exit_after(answer):
            proto.flush()
            os._exit(3)  # the parent starts a fresh process with a clean context


def poisoned(status: str, message: str) -> bool:
    """Whether the process that gave this answer exits after it (its CUDA context is unusable)."""
    return status == "crashed" and any(p in message for p in _POISON)


def main() -> None:
    serve(lambda req: run_trial(req).to_json(), lambda why: TrialResult.failed("invalid", why, {}).to_json(),
          exit_after=lambda answer: poisoned(answer["status"], answer["message"]))


if __name__ == "__main__":
    main()
