"""The dashboard's submit form, derived from the request's fields (tuner/request_fields.py) as the
options of `tuner submit` and the body of POST /v1/jobs are: it offers what the command does, and
what it posts is read into the API's schema (JobIn) and checked by the same functions, so a bad
value gets the same one-line error as from the CLI and the API."""
from __future__ import annotations

from typing import Any, Mapping

from tuner.api.routes import JobIn, request_values
from tuner.request_fields import REQUIRED, fields_of

# what the form shows before anything was typed: a job that runs anywhere (the CPU interpreter)
EXAMPLE = {"kernel": "matmul", "shapes": "M=256,N=256,K=256", "device_class": "cpu"}


def _text(value: Any) -> str:
    if value is None or value is REQUIRED:
        return ""
    return "\n".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def form_fields(typed: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The form's inputs, in the declaration's order, with what was typed (or the example, or the default)."""
    out = []
    for f in fields_of("submit"):
        value = typed[f.name] if f.name in typed else EXAMPLE.get(f.name, f.default)
        if f.kind is bool:
            kind = "checkbox"
        elif f.many:
            kind = "textarea"
        elif f.choices is not None:
            kind = "select"
        else:
            kind = "number" if f.kind in (int, float) else "text"
        out.append({"name": f.name, "label": (f.flag or f.name).lstrip("-").replace("-", " "), "help": f.help,
                    "input": kind, "value": bool(value) if kind == "checkbox" else _text(value),
                    "required": f.default is REQUIRED, "optional": f.optional,
                    "choices": list(f.choices()) if f.choices else [], "min": f.lo, "max": f.hi,
                    "step": "any" if f.kind is float else None})
    return out


def typed_values(form: Mapping[str, Any]) -> dict[str, Any]:
    """What the form posted, per field: a list field one entry per line, a checkbox present or
    not, an empty input left out (the field's default)."""
    typed: dict[str, Any] = {}
    for f in fields_of("submit"):
        raw = form.get(f.name)
        if f.kind is bool:
            typed[f.name] = raw is not None
        elif f.many:
            typed[f.name] = [line.strip() for line in str(raw or "").splitlines() if line.strip()]
        elif raw is not None and str(raw).strip():
            typed[f.name] = str(raw).strip()
    return typed


def request_of(typed: Mapping[str, Any]) -> dict[str, Any]:
    """The request fields' values, as the API reads a body (pydantic's ValidationError when a value
    does not fit the schema: 422, as from the API)."""
    return request_values(JobIn.model_validate(dict(typed)))
