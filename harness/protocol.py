"""The harness protocol: one JSON object per line between a worker and its benchmark child.

Never pickled: a message is a frozen dataclass with a plain-JSON form, validated on receipt.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from search_spaces.base import DEFAULT_ROUTING  # the kernels' default routing, named in requests

STATUSES = ("ok", "invalid", "compile_error", "out_of_resources", "wrong_result", "timeout", "crashed")


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(f"malformed harness message: {what}")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


MAX_ROTATE_BUFFERS = 16  # input sets kept at once: 16 sets of a 4096x14336 bf16 matmul take 4.3 GB


@dataclass(frozen=True)
class Measurement:
    """How a job's trials are timed, where the defaults are not wanted: chosen per job (`tuner tune`
    and `tuner submit`: --rotate-buffers, --cuda-graph, --max-cv), kept in the job's request and
    applied to every trial of it, the final re-measurement included."""
    rotate_buffers: int = 1  # input sets cycled through, one per repetition, so no cache keeps them
    cuda_graph: bool = False  # time replays of a captured CUDA graph (GPU only; ignored on the CPU)
    max_cv: float | None = None  # above this cv, measure once more with twice the reps; keep the steadier
    # how the inputs route tokens, for a kernel that routes them (one of its KernelSpec.routings)
    routing: str = DEFAULT_ROUTING

    def __post_init__(self) -> None:
        r, cv = self.rotate_buffers, self.max_cv
        if not isinstance(self.routing, str) or not self.routing.isidentifier():
            raise ValueError(f"routing must be a name such as {DEFAULT_ROUTING!r}, got {self.routing!r}")
        if type(r) is not int or not 1 <= r <= MAX_ROTATE_BUFFERS:
            raise ValueError(f"rotate_buffers must be an int from 1 to {MAX_ROTATE_BUFFERS}, got {r!r}")
        if not isinstance(self.cuda_graph, bool):
            raise ValueError(f"cuda_graph must be true or false, got {self.cuda_graph!r}")
        if cv is not None and not (_num(cv) and cv > 0 and math.isfinite(cv)):
            raise ValueError(f"max_cv must be a number > 0 or null, got {cv!r}")

    @property
    def tag(self) -> str:
        """What a study's name adds for this measurement: times taken with CUDA graphs (no launch
        cost) or over rotating inputs are not comparable with plain ones, so such a job keeps a
        study of its own instead of continuing, and being ranked against, the plain one. max_cv
        changes how often a trial is measured, not what its time means."""
        return ("+graph" if self.cuda_graph else "") + (f"+rot{self.rotate_buffers}" if self.rotate_buffers > 1 else "") \
            + (f"+{self.routing}" if self.routing != DEFAULT_ROUTING else "")

    def describe(self) -> str:
        """In words, for tables; empty for the defaults."""
        return ", ".join(([f"{self.rotate_buffers} rotating input sets"] if self.rotate_buffers > 1 else [])
                         + (["CUDA graph replays"] if self.cuda_graph else [])
                         + ([f"re-measured when cv > {self.max_cv:g}"] if self.max_cv else [])
                         + ([f"{self.routing} routing"] if self.routing != DEFAULT_ROUTING else []))

    def to_json(self) -> dict[str, Any]:
        """The fields; routing only where it is not the default, so that a job's stored request
        and a trial message read as they did before kernels routed tokens."""
        d = asdict(self)
        if self.routing == DEFAULT_ROUTING:
            del d["routing"]
        return d

    @classmethod
    def from_json(cls, d: Any) -> "Measurement":
        """A stored or received measurement; None (a job from before there were any) is the default."""
        if d is None:
            return cls()
        if not isinstance(d, dict) or set(d) - set(cls.__dataclass_fields__):
            raise ValueError(f"measurement must be an object with fields {sorted(cls.__dataclass_fields__)}, got {d!r}")
        return cls(**d)


@dataclass(frozen=True)
class TrialRequest:
    kernel: str
    key: dict[str, Any]  # TuningKey JSON
    config: dict[str, Any]
    device: str  # cpu | cuda:N
    arch: str  # interpreter | sm_90 | gfx942 ...
    seed: int = 0
    warmup: int = 1
    reps: int = 10
    min_time_s: float = 0.0  # keep repeating until this much was timed (up to reps)
    early_stop_ms: float | None = None  # stop after the first timed rep if it is slower than this
    timeout_s: float = 120.0  # enforced by the parent
    # a Measurement's fields, flat (all optional: a message without them means what it meant before)
    rotate_buffers: int = 1
    cuda_graph: bool = False
    max_cv: float | None = None
    routing: str = DEFAULT_ROUTING
    # the launch signature a kernel's inputs are rebuilt from (KernelSpec.trial_inputs: the drop-ins')
    signature: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if d["signature"] is None:  # a message without one reads as it did before drop-ins
            del d["signature"]
        return d

    @classmethod
    def from_json(cls, d: Any) -> "TrialRequest":
        _need(isinstance(d, dict), "request must be an object")
        _need(isinstance(d.get("kernel"), str), "kernel must be a string")
        _need(isinstance(d.get("key"), dict), "key must be an object")
        _need(isinstance(d.get("config"), dict), "config must be an object")
        _need(isinstance(d.get("device"), str) and (d["device"] == "cpu" or d["device"].startswith("cuda")),
              "device must be cpu or cuda:N")
        _need(isinstance(d.get("arch"), str), "arch must be a string")
        for name in ("seed", "warmup", "reps"):
            _need(type(d.get(name, 0)) is int and d.get(name, 0) >= 0, f"{name} must be a non-negative int")
        _need(_num(d.get("min_time_s", 0.0)), "min_time_s must be a number")
        _need(d.get("early_stop_ms") is None or _num(d["early_stop_ms"]), "early_stop_ms must be a number or null")
        _need(_num(d.get("timeout_s", 1.0)) and d.get("timeout_s", 1.0) > 0, "timeout_s must be > 0")
        _need(d.get("signature") is None or isinstance(d["signature"], dict), "signature must be an object or null")
        try:
            Measurement.from_json({k: d[k] for k in Measurement.__dataclass_fields__ if k in d})
        except ValueError as exc:
            _need(False, str(exc))
        unknown = set(d) - set(cls.__dataclass_fields__)
        _need(not unknown, f"unknown fields {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class TrialResult:
    status: str
    message: str = ""
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    cv: float | None = None
    reps: int = 0
    compile_s: float | None = None
    max_abs_err: float | None = None
    early_stopped: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    remeasured: int = 0  # measurements repeated because the first one's cv exceeded max_cv

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> "TrialResult":
        _need(isinstance(d, dict), "result must be an object")
        _need(d.get("status") in STATUSES, f"status must be one of {STATUSES}")
        _need(isinstance(d.get("message", ""), str), "message must be a string")
        for name in ("median_ms", "p20_ms", "p80_ms", "cv", "compile_s", "max_abs_err"):
            _need(d.get(name) is None or _num(d[name]), f"{name} must be a number or null")
        _need(type(d.get("reps", 0)) is int and d.get("reps", 0) >= 0, "reps must be an int >= 0")
        _need(isinstance(d.get("early_stopped", False), bool), "early_stopped must be true or false")
        _need(isinstance(d.get("config", {}), dict), "config must be an object")
        _need(type(d.get("remeasured", 0)) is int and d.get("remeasured", 0) >= 0, "remeasured must be an int >= 0")
        unknown = set(d) - set(cls.__dataclass_fields__)
        _need(not unknown, f"unknown fields {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def failed(cls, status: str, message: str, config: dict[str, Any]) -> "TrialResult":
        return cls(status=status, message=message, config=config)
