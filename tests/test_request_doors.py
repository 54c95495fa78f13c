"""A tuning request has three doors, `tuner submit`, POST /v1/jobs and the dashboard's form, all
derived from one declaration (tuner/request_fields.py): the same fields, and for a bad value the
same one-line error (the CLI: exit 2; the API and the form: 422), nothing queued."""
from __future__ import annotations

import html
import re

import pytest

from tests.cli_helpers import run_tuner
from tests.test_api import AUTH, SAME_ORIGIN, jobs_written, make_client
from tests.test_cli_errors import assert_one_line_error
from tuner.request_fields import REQUEST_FIELDS, RequestField, fields_of

# a request that every door takes, and one change that each door must refuse with the message
GOOD = {"kernel": "matmul", "shapes": ["M=64,N=64,K=64"], "device_class": "cpu"}
BAD = {
    "unknown kernel": ({"kernel": "nosuchkernel"}, "unknown kernel 'nosuchkernel'"),
    "malformed shape": ({"shapes": ["M64,N=64,K=64"]}, "malformed shape 'M64,N=64,K=64'"),
    "missing dim": ({"shapes": ["M=64,N=64"]}, "missing K"),
    "unknown dtype": ({"dtypes": ["float8"]}, "dtype 'float8'"),
    "zero trials": ({"trials": 0}, "--trials 0 is impossible"),
    "trials over the bound": ({"trials": 100_001}, "--trials 100001 is too many"),
    "unknown sampler": ({"sampler": "magic"}, "unknown sampler 'magic'"),
    "negative seed": ({"seed": -1}, "--seed -1 is out of range"),
    "zero parallel": ({"parallel": 0}, "--parallel 0 is out of range"),
    "no rotation sets": ({"rotate_buffers": 0}, "--rotate-buffers 0 is out of range"),
    "negative max cv": ({"max_cv": -0.1}, "--max-cv -0.1 is impossible"),
    "routing of a matmul": ({"routing": "skewed"}, "--routing 'skewed' does not apply to matmul"),
    "graphs on the cpu class": ({"cuda_graph": True}, "CUDA graph"),
    "unknown device class": ({"device_class": "tpu"}, "unknown device class 'tpu'"),
    "tp without a model": ({"tp": 2}, "--tp, --batch-sizes, --lora-ranks and --max-loras go with --model"),
    "unknown model": ({"kernel": None, "shapes": [], "model": "nosuchmodel"}, "nosuchmodel"),
    "a model with shapes": ({"kernel": None, "model": "mixtral-8x7b"}, "--model expands to the model's own shapes"),
    "bad batch sizes": ({"kernel": None, "shapes": [], "model": "mixtral-8x7b", "batch_sizes": "1,x"},
                        "--batch-sizes"),
    "max loras without ranks": ({"kernel": None, "shapes": [], "model": "llama-3-8b", "max_loras": 2},
                                "--max-loras 2 needs --lora-ranks"),
}
FIELD = {f.name: f for f in REQUEST_FIELDS}


def cli_args(body: dict) -> list[str]:
    """`tuner submit` with the body's fields, through the flags their declaration names."""
    args = ["submit"] + ([body["kernel"]] if body.get("kernel") else [])
    for name, value in body.items():
        f: RequestField = FIELD[name]
        if f.flag is None or value is None or value is False:
            continue
        values = value if f.many else [value]
        args += [f.flag] if value is True else [a for v in values for a in (f.flag, str(v))]
    return args


def form_data(body: dict) -> dict:
    """The form's inputs for the body's fields: a list one entry per line, a ticked checkbox."""
    data = {}
    for name, value in body.items():
        if value is None or value is False:
            continue
        data[name] = "on" if value is True else "\n".join(map(str, value)) if FIELD[name].many else str(value)
    return data


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_request_gets_the_same_error_from_the_cli_the_api_and_the_form(case, tmp_path):
    change, expected = BAD[case]
    body = {**GOOD, **change}
    home = tmp_path / "home"

    proc = run_tuner(cli_args(body), home)
    assert_one_line_error(proc, expected)
    cli_line = proc.stderr.strip().removeprefix("error: ")

    api = make_client(home)
    r = api.post("/v1/jobs", json={k: v for k, v in body.items() if v is not None}, headers=AUTH)
    assert r.status_code == 422 and expected in r.json()["error"], r.text
    # the same line (its first clause: what follows may list the kernels this process registered)
    assert r.json()["error"].split(";")[0] == cli_line.split(";")[0]

    r = api.post("/jobs", data=form_data(body), headers={**SAME_ORIGIN, "accept": "text/html"})
    assert r.status_code == 422, r.text
    shown = re.search(r'<p class="error" id="submit-error">([^<]*)</p>', r.text)
    assert shown and html.unescape(shown.group(1)).split(";")[0] == cli_line.split(";")[0], r.text
    assert jobs_written(home) == 0


def test_the_api_and_the_form_take_the_fields_of_tuner_submit(tmp_path):
    """Derived from the declaration: a field declared there is an option of `tuner submit`, a
    property of the API's schema and an input of the form, with the same default."""
    import typer.main

    from tuner.api.routes import JobIn
    from tuner.api.submit_form import form_fields
    from tuner.cli import app

    command = typer.main.get_command(app).commands["submit"]
    cli = {p.name: p.default for p in command.params if p.name in FIELD}
    declared = {f.name for f in fields_of("submit")}
    assert set(cli) == declared == set(JobIn.model_fields) == {f["name"] for f in form_fields({})}
    for name in declared - {"device_class"}:  # the one field without a default is required everywhere
        assert JobIn.model_fields[name].default == cli[name] == FIELD[name].default, name
    assert JobIn.model_fields["device_class"].is_required() and command.params[
        [p.name for p in command.params].index("device_class")].required
    # the fields the API lacked before it was derived: routing, a model and its sizes, LoRA
    assert {"routing", "model", "tp", "batch_sizes", "lora_ranks", "max_loras", "seed", "sampler"} <= declared
    # and `tuner tune` takes the same fields but those of a queued job
    tune = typer.main.get_command(app).commands["tune"]
    assert {p.name for p in tune.params if p.name in FIELD} == {f.name for f in fields_of("tune")} \
        == declared - {"device_class", "parallel"}


def test_a_field_added_to_the_declaration_shows_in_all_three_doors(monkeypatch):
    """The derivations read the declaration when they run: one more field is one more option,
    schema property and form input."""
    import typer

    from tuner import request_fields
    from tuner.api import routes, submit_form
    from tuner.cli.common import request_options

    extra = RequestField("note", str, None, "A note kept with the job.", "--note", optional=True)
    monkeypatch.setattr(request_fields, "REQUEST_FIELDS", (*request_fields.REQUEST_FIELDS, extra))
    assert "note" in routes._job_schema().model_fields
    assert "note" in {f["name"] for f in submit_form.form_fields({})}
    app = typer.Typer()
    seen = {}
    app.command()(request_options("submit")(lambda request: seen.update(request)))
    from typer.testing import CliRunner

    assert CliRunner().invoke(app, ["--device-class", "cpu", "--note", "hello"]).exit_code == 0
    assert seen["note"] == "hello"


def test_every_field_reaches_the_request_by_its_name():
    """A declared field is passed to build_requests or build_measurement under its own name, or is
    the queue's (the shapes and dtypes as lists): a field added to the declaration and to neither
    would be taken by every door and reach no job."""
    import inspect

    from tuner import request_fields
    from tuner.request import build_measurement, build_requests

    takes = set(inspect.signature(build_requests).parameters)
    assert set(request_fields.REQUEST_ARGUMENTS) <= takes
    assert set(request_fields.MEASUREMENT_FIELDS) == set(inspect.signature(build_measurement).parameters)
    reached = {*request_fields.REQUEST_ARGUMENTS, *request_fields.MEASUREMENT_FIELDS, "shapes", "dtypes"}
    queue = {"parallel", "device_class"}
    assert {f.name for f in REQUEST_FIELDS} == reached | queue
    assert takes - reached == {"measurement"}  # every argument but the one built from fields
