"""`tuner sweep-shapes`: one tuning job per value of one dimension, the others fixed, so that
`tuner report shapes` can show what a model dimension that is not a multiple of a large power of
two costs. Every point is checked before the first job is queued: a bad one queues nothing.
"""
from __future__ import annotations

from tuner.errors import UserError
from tuner.request import TuneRequest, build_request, check_fanout, parse_shape, refuse_unfit

MAX_POINTS = 256


def parse_vary(text: str, require_values: bool = True) -> tuple[str, list[int]]:
    """'N=3968:4224:32' (start:stop:step, stop included) or 'N=4000,4096' -> ('N', values).
    Without require_values a bare 'N' is accepted (the report: every stored value)."""
    name, sep, spec = str(text).partition("=")
    name = name.strip()
    shown = str(text)[:80]
    if not name or not name.isidentifier():
        raise UserError(f"malformed --vary {shown!r}: write NAME=START:STOP:STEP, e.g. N=3968:4224:32")
    if not sep:
        if require_values:
            raise UserError(f"--vary {shown!r} gives no values: write {name}=START:STOP:STEP, e.g. {name}=3968:4224:32")
        return name, []
    try:
        if ":" in spec:
            start, stop, step = (int(p) for p in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            if (stop - start) // step + 1 > MAX_POINTS:
                raise UserError(f"--vary {shown!r} has more than {MAX_POINTS} points; take a larger step")
            values = list(range(start, stop + 1, step))
        else:
            values = sorted({int(p) for p in spec.split(",")})
    except ValueError:
        raise UserError(f"malformed --vary {shown!r}: write NAME=START:STOP:STEP with integers, START <= STOP "
                        f"and STEP > 0 (e.g. {name}=3968:4224:32), or NAME=V1,V2,...") from None
    if len(values) > MAX_POINTS:
        raise UserError(f"--vary {shown!r} has more than {MAX_POINTS} points")
    return name, values


def point_shapes(vary: str, shape: str | None) -> tuple[str, list[int], dict[str, str], list[str]]:
    """(varied dim, its values, the fixed dims, one --shape string per point)."""
    name, values = parse_vary(vary)
    fixed = parse_shape(shape) if shape else {}
    if name in fixed:
        raise UserError(f"{name} is both varied (--vary) and fixed (--shape); give it once")
    return name, values, fixed, [",".join([*(f"{k}={v}" for k, v in fixed.items()), f"{name}={x}"]) for x in values]


def requests(kernel: str, vary: str, shape: str | None, dtypes: list[str], trials: int, sampler: str,
             seed: int | None, measurement) -> list[TuneRequest]:
    """One request per point, each validated by the kernel (missing or unknown dims, bad values)."""
    _, _, _, shapes = point_shapes(vary, shape)
    return [build_request(kernel, [s], dtypes, trials, sampler, seed, measurement) for s in shapes]


def submit_sweep(settings, reqs: list[TuneRequest], device_class: str, parallel: int) -> list[str]:
    """Queue every point (coordinator.submit); all are checked against the class first."""
    from devices.classes import resolve_device_class
    from tuner.coordinator import submit

    selector = resolve_device_class(device_class)
    check_fanout(reqs, parallel, settings.batch_trials)
    for req in reqs:
        refuse_unfit(req, selector, f"device class {selector}")
    return [submit(settings, req, device_class, parallel) for req in reqs]
