"""Parse and validate a tuning request before anything is written anywhere."""
from __future__ import annotations

from dataclasses import dataclass, replace

from devices.fit import unfit
from harness.protocol import DEFAULT_ROUTING, MAX_ROTATE_BUFFERS, Measurement
from search import strategies
from search_spaces import registry
from keys import SpecError, TuningKey
from tuner.errors import UserError
from workers.job_request import JobRequest, Runner

MAX_TRIALS = 100_000  # per key: a budget no search needs more of, and far from int4's limit
MAX_SEED = 2**31 - 1  # a seed is stored in an int4 column and seeds numpy (0 to 2**32 - 1)
MAX_DIM_DIGITS = 18  # a dim is an int64 on every path
MAX_PARALLEL = 64  # batches in flight per key: more workers than this never cooperate on one study
# trial-batch messages one request may put on the queue (keys x batches each): 25,001 held an API
# thread for 31 s; a model preset's largest job sends a few hundred
MAX_MESSAGES = 4096


def clip(text: str, limit: int = 40) -> str:
    """What the user typed, quoted, at most `limit` characters of it: an error echoes no more."""
    text = str(text)
    return repr(text[:limit]) + (f" (+{len(text) - limit} more characters)" if len(text) > limit else "")


@dataclass(frozen=True)
class TuneRequest:
    kernel: str
    keys: tuple[TuningKey, ...]
    trials: int
    sampler: str = strategies.DEFAULT
    seed: int | None = None
    measurement: Measurement = Measurement()
    # per key (same order), a drop-in kernel's launch signature or None (`tuner tune --from-misses`)
    signatures: tuple[dict | None, ...] = ()

    def key_rows(self) -> list[dict]:
        """The keys as their job rows store them: a drop-in's signature beside the key's fields."""
        sigs = self.signatures or (None,) * len(self.keys)
        return [{**k.to_json(), **({"signature": sig} if sig is not None else {})} for k, sig in zip(self.keys, sigs)]

    def job_request(self, batch_trials: int | None = None, runner: Runner | None = None) -> JobRequest:
        """What the job row stores: a queued job's with its batch size, a local one's with its process."""
        return JobRequest(self.kernel, tuple(self.key_rows()), self.trials, self.sampler, self.seed,
                          self.measurement, batch_trials=batch_trials, runner=runner)


def parse_shape(text: str) -> dict[str, str]:
    """'M=512,N=512,K=512' -> {'M': '512', ...}; values are checked by the kernel's make_key."""
    dims: dict[str, str] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise UserError(f"malformed shape {clip(text)}: write it as NAME=INT pairs, e.g. M=512,N=512,K=512")
        if name in dims:
            raise UserError(f"shape {clip(text)} gives {clip(name, 20)} twice")
        if len(name) > 40 or len(value) > MAX_DIM_DIGITS:
            raise UserError(f"shape dim {clip(name, 20)}={clip(value, 20)} is too long: give a positive integer "
                            f"of at most {MAX_DIM_DIGITS} digits, e.g. M=512")
        dims[name] = value
    return dims


def build_measurement(rotate_buffers: int = 1, cuda_graph: bool = False, max_cv: float | None = None,
                      routing: str = DEFAULT_ROUTING) -> Measurement:
    """The measurement options of `tuner tune` and `tuner submit`, checked with the flags' names
    (whether the kernel routes tokens is checked with the kernel, in build_request)."""
    if not 1 <= rotate_buffers <= MAX_ROTATE_BUFFERS:
        raise UserError(f"--rotate-buffers {rotate_buffers} is out of range: give 1 (no rotation) "
                        f"to {MAX_ROTATE_BUFFERS} input sets")
    if max_cv is not None and not 0 < max_cv < float("inf"):
        raise UserError(f"--max-cv {max_cv:g} is impossible: give a coefficient of variation above 0, "
                        "e.g. 0.05 to re-measure trials that vary by more than 5%")
    if not routing.isidentifier():
        raise UserError(f"--routing {routing[:40]!r} is not a routing name; use uniform or skewed")
    return Measurement(rotate_buffers, cuda_graph, max_cv, routing)


def refuse_unfit(req: TuneRequest, selector: str, where: str, host_memory: int | None = None) -> None:
    """Refuse, before anything is written, what a device class cannot run (devices/fit.py: CUDA
    graphs on the interpreter, a trial bigger than the class's memory; on the interpreter
    `host_memory`, this host's for a local tune and for `tuner submit` to the CPU class)."""
    why = unfit(registry.get(req.kernel), req.keys, selector, where, input_sets=req.measurement.rotate_buffers,
                cuda_graph=req.measurement.cuda_graph, host_bytes=host_memory)
    if why is not None:
        raise UserError(why)


def check_fanout(reqs: list[TuneRequest], parallel: int, batch_trials: int) -> list[int]:
    """Refuse, before anything is written, a --parallel out of 1..MAX_PARALLEL or a request that
    would queue more than MAX_MESSAGES batches; returns each request's batches per key."""
    if not 1 <= parallel <= MAX_PARALLEL:
        raise UserError(f"--parallel {str(parallel)[:20]} is out of range: give 1 to {MAX_PARALLEL} batches in "
                        "flight per key")
    per_key = []
    for req in reqs:
        batches = min(parallel, -(-req.trials // min(batch_trials, req.trials)))
        if batches * len(req.keys) > MAX_MESSAGES:
            raise UserError(f"{req.kernel}: {len(req.keys)} keys x {batches} batches would queue "
                            f"{batches * len(req.keys)} messages, more than {MAX_MESSAGES}; give fewer shapes "
                            "or a lower --parallel, or submit them in parts")
        per_key.append(batches)
    return per_key


def build_request(kernel: str, shapes: list[str], dtypes: list[str], trials: int,
                  sampler: str = strategies.DEFAULT, seed: int | None = None,
                  measurement: Measurement = Measurement()) -> TuneRequest:
    try:
        spec = registry.get(kernel)
    except SpecError as exc:
        raise UserError(str(exc)) from None
    if not shapes:
        want = ",".join(f"{n}=<int>" for n in spec.key_names)
        raise UserError(f"give at least one --shape {want}")
    if trials < 1:
        raise UserError(f"--trials {trials} is impossible: a search needs at least 1 trial")
    if trials > MAX_TRIALS:
        raise UserError(f"--trials {str(trials)[:20]} is too many: give at most {MAX_TRIALS} per key")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {str(seed)[:20]} is out of range: give 0 to {MAX_SEED}")
    if sampler not in strategies.names():
        raise UserError(f"unknown sampler {sampler[:40]!r}; use one of {', '.join(strategies.names())}")
    if measurement.routing != DEFAULT_ROUTING and measurement.routing not in spec.routings:
        raise UserError(f"--routing {measurement.routing[:40]!r} does not apply to {kernel}: "
                        + (f"use one of {', '.join(spec.routings)}" if spec.routings else "it routes no tokens; drop --routing"))
    keys = []
    for shape in shapes:
        dims = parse_shape(shape)
        for dtype in dtypes or ["float32"]:
            if len(dtype) > 40:
                raise UserError(f"dtype {clip(dtype)} is not supported by {kernel}; use one of {', '.join(spec.dtypes)}")
            try:
                keys.append(spec.make_key(dims, dtype))
            except SpecError as exc:
                raise UserError(str(exc)) from None
    unique = tuple(dict.fromkeys(keys))
    return TuneRequest(kernel, unique, trials, sampler, seed, measurement)


def build_requests(kernel: str | None, shapes: list[str], dtypes: list[str], trials: int,
                   sampler: str = strategies.DEFAULT, seed: int | None = None,
                   measurement: Measurement = Measurement(), model: str | None = None, tp: int | None = None,
                   batch_sizes: str | None = None, lora_ranks: str | None = None,
                   max_loras: int | None = None) -> list[TuneRequest]:
    """`tuner tune` and `tuner submit`: one request for KERNEL and its --shape list, or with --model
    one request per kernel the model's layers run on (KERNEL's only, where one is named), keyed by
    every layer at --tp and every batch size, in the model's dtype unless --dtype says; with
    --lora-ranks also the LoRA kernels' keys of every dense layer at those ranks."""
    from tuner import presets

    if model is None:
        if kernel is None:
            raise UserError("give a kernel and --shape (`tuner kernels` lists kernels), or --model "
                            "(`tuner models` lists models)")
        if tp is not None or batch_sizes is not None or lora_ranks is not None or max_loras is not None:
            raise UserError("--tp, --batch-sizes, --lora-ranks and --max-loras go with --model; give --model or drop them")
        return [build_request(kernel, shapes, dtypes, trials, sampler, seed, measurement)]
    if shapes:
        raise UserError("--model expands to the model's own shapes; drop --shape")
    if max_loras is not None and (lora_ranks is None or max_loras < 1):
        raise UserError(f"--max-loras {max_loras} needs --lora-ranks and a count of 1 or more, e.g. "
                        "--lora-ranks 16 --max-loras 4")
    m = presets.load(model)
    tp, sizes = 1 if tp is None else tp, presets.parse_batch_sizes(batch_sizes)
    out = []
    # a dtype decides the kernels (a quantized scheme's MoE layers run on fused_moe_quant): keyed per dtype
    for dtype in dict.fromkeys(dtypes or [m.dtype]):
        keys = m.keys(tp, sizes, dtype=dtype[:40])
        if lora_ranks is not None:
            keys |= m.lora_keys(tp, sizes, presets.parse_ints(lora_ranks, "--lora-ranks", "8,16,64"), max_loras or 1)
        if kernel is not None:
            if kernel not in keys:
                raise UserError(f"{m.name} has no layer on {kernel[:40]} in {dtype[:40]}; its kernels: {', '.join(keys)}")
            keys = {kernel: keys[kernel]}
        for name, dims_list in keys.items():
            spec = registry.get(name)
            # a routing is the MoE layers' measurement: the dense projections are timed as always
            how = measurement if spec.routings else replace(measurement, routing=DEFAULT_ROUTING)
            out.append(build_request(name, [",".join(f"{k}={v}" for k, v in dims.items()) for dims in dims_list],
                                     [dtype], trials, sampler, seed, how))
    return out
