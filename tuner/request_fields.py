"""The fields of a tuning request, declared once: the options of `tuner submit` (and of `tuner tune`,
where they share them), the body of POST /v1/jobs and the dashboard's submit form are all derived
from REQUEST_FIELDS (tuner/cli/common.py request_options, tuner/api/routes.py JobIn,
tuner/api/submit_form.py form_fields), and `requests_from` turns what any of the three doors took into
the checked requests (tuner/request.py), so a bad value gets the same one-line error from each.
A field added here shows in all three.

Nothing here checks a value: the checks, and their messages, are tuner/request.py's, made once
for every door; `lo` and `hi` say the bounds those checks hold, for the form and the API's schema.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

from harness.protocol import DEFAULT_ROUTING, MAX_ROTATE_BUFFERS
from search import strategies
from tuner.request import (
    MAX_PARALLEL,
    MAX_SEED,
    MAX_TRIALS,
    TuneRequest,
    build_measurement,
    build_requests,
    check_fanout,
)

REQUIRED = ...  # a field without a default: the command's argument or option must be given
BOTH, SUBMIT = ("tune", "submit"), ("submit",)


@dataclass(frozen=True)
class RequestField:
    name: str  # the Python name: the JSON field of POST /v1/jobs and the form's input name
    kind: type  # int | float | str | bool; with `many`, a list of them
    default: Any
    help: str
    flag: str | None = None  # the CLI's; None for the positional argument
    many: bool = False  # repeatable in the CLI, a list in JSON, one per line in the form
    optional: bool = False  # None is a value (not given)
    lo: float | None = None
    hi: float | None = None
    commands: tuple[str, ...] = BOTH
    choices: Callable[[], Sequence[str]] | None = None  # what the form offers ("" for none, when optional)
    max_items: int | None = None  # the API's bound on a list (a body stays small)


@lru_cache(maxsize=1)
def _models() -> tuple[str, ...]:
    """The shipped presets' names (read once: the form offers them on every render, and parsing
    the TOML files took 6 ms of each /jobs page)."""
    from tuner import presets

    return tuple(m.name for m in presets.all_models())


REQUEST_FIELDS: tuple[RequestField, ...] = (
    RequestField("kernel", str, None, "A registered kernel (`tuner kernels` lists them); with --model, only the "
                 "model's layers on it.", optional=True),
    RequestField("shapes", str, [], "Key dims, e.g. M=4096,N=4096,K=4096 (repeatable; not with --model).",
                 "--shape", many=True, max_items=256),
    RequestField("dtypes", str, [], "float16 | bfloat16 | float32 (repeatable; default float32, with --model the "
                 "model's dtype).", "--dtype", many=True, max_items=8),
    RequestField("device_class", str, REQUIRED, "h100 | mi300x | cpu | a slug", "--device-class", commands=SUBMIT),
    RequestField("trials", int, 20, "Measured trials per key (across all workers of a queued job).", "--trials",
                 lo=1, hi=MAX_TRIALS),
    RequestField("sampler", str, strategies.DEFAULT, f"The search strategy: {', '.join(strategies.BUILTIN)}, or one "
                 "registered with TUNER_STRATEGY_MODULES.", "--sampler", choices=strategies.names),
    RequestField("seed", int, None, "The strategy's seed (default: a random one).", "--seed", optional=True,
                 lo=0, hi=MAX_SEED),
    RequestField("parallel", int, 2, "Batches in flight per key (workers that cooperate).", "--parallel",
                 lo=1, hi=MAX_PARALLEL, commands=SUBMIT),
    RequestField("rotate_buffers", int, 1, "Input sets to cycle through, one per timed repetition, so that no "
                 f"cache keeps the inputs between repetitions (1 to {MAX_ROTATE_BUFFERS}).", "--rotate-buffers",
                 lo=1, hi=MAX_ROTATE_BUFFERS),
    RequestField("cuda_graph", bool, False, "Time replays of a captured CUDA graph, which leaves out the host's "
                 "launch cost (GPU only): for kernels of a few microseconds.", "--cuda-graph"),
    RequestField("max_cv", float, None, "Measure a trial again, with twice the repetitions, when its coefficient "
                 "of variation exceeds this (e.g. 0.05).", "--max-cv", optional=True, lo=0),
    RequestField("routing", str, DEFAULT_ROUTING, "How a MoE kernel's tokens are routed while timed: uniform, or "
                 "skewed (expert popularity 1/rank); a skewed job keeps a study of its own.", "--routing"),
    RequestField("model", str, None, "A model preset (`tuner models`) or a model TOML file: tune every layer it "
                 "serves, MoE layers on fused_moe, dense ones on matmul.", "--model", optional=True, choices=_models),
    RequestField("tp", int, None, "With --model: the tensor-parallel size (default 1).", "--tp", optional=True, lo=1),
    RequestField("batch_sizes", str, None, "With --model: tokens per batch, e.g. 1,16,256 (default vLLM's "
                 "1,2,4,...,4096).", "--batch-sizes", optional=True),
    RequestField("lora_ranks", str, None, "With --model: also the LoRA shrink and expand keys of every dense layer "
                 "at these adapter ranks, e.g. 8,16,64.", "--lora-ranks", optional=True),
    RequestField("max_loras", int, None, "With --lora-ranks: adapters a batch holds (vLLM's --max-loras; "
                 "default 1).", "--max-loras", optional=True, lo=1),
)


# the fields build_requests takes as they are, and those build_measurement makes a Measurement of;
# the rest (parallel, device_class) are the queue's, read by the submit
REQUEST_ARGUMENTS = ("kernel", "trials", "sampler", "seed", "model", "tp", "batch_sizes", "lora_ranks", "max_loras")
MEASUREMENT_FIELDS = ("rotate_buffers", "cuda_graph", "max_cv", "routing")


def fields_of(command: str) -> tuple[RequestField, ...]:
    return tuple(f for f in REQUEST_FIELDS if command in f.commands)


def defaults(command: str) -> dict[str, Any]:
    return {f.name: f.default for f in fields_of(command) if f.default is not REQUIRED}


def requests_from(values: dict[str, Any], batch_trials: int | None = None) -> list[TuneRequest]:
    """The checked requests (one per kernel of a --model) of the fields' values, however they came
    (`tuner tune`, `tuner submit`, the API, the form); UserError, one line, for the first bad one.
    With `batch_trials` (TUNER_BATCH_TRIALS: a queued job's), every job's fan-out is checked
    too, before the first is queued."""
    v = values
    # a field reaches build_requests by its name (the measurement's four through build_measurement):
    # test_request_doors.py holds every field to one of the two
    direct = {n: v[n] for n in REQUEST_ARGUMENTS}
    reqs = build_requests(**direct, shapes=list(v["shapes"]), dtypes=list(v["dtypes"]),
                          measurement=build_measurement(**{n: v[n] for n in MEASUREMENT_FIELDS}))
    if batch_trials is not None:
        check_fanout(reqs, v["parallel"], batch_trials)
    return reqs
