"""Every kernel through the contract (search_spaces/base.py KernelSpec), on the Triton interpreter at
a tiny shape, each trial run by the harness's own `run_trial` as a benchmark process runs it:

- the default is valid (check() says None) and its output agrees with the reference;
- check() agrees with launch: a configuration check() refuses is answered "invalid" and never
  launched; a sample of those it accepts launch and agree with the reference;
- the space, the key and a configuration come back equal from JSON, and the key from its label as
  `--shape` and `--dtype` are written.

Every registered kernel is here (the built-ins and the test kernels conftest registers, except
tests/kernels/broken.py, whose kernels fail on purpose), each at the shape it declares
(`KernelSpec.tiny_shape`; every dim 16 and its first dtype where it declares none), so a new kernel
is covered with no line here; and every drop-in kernel in tests/kernels/ (`tuner.runtime.autotune`,
launched from the signature a miss would record), whose launches are listed in DROPINS.
"""
import json
import random
import sys

import pytest
import torch

import tests.kernels.dropin as dropins
import tests.kernels.reported as reported
from devices.targets import target_for
from harness.benchmark import run_trial
from harness.protocol import TrialRequest
from keys import TuningKey, config_hash
from search_spaces import registry
from search_spaces.dropin import signature_of
from tuner.request import parse_shape
from tuner.runtime.dropin import DropinKernel

TARGET = target_for("interpreter")
SAMPLE = 2  # accepted configurations launched beside the default, per kernel
BROKEN_ON_PURPOSE = "tests.kernels.broken"

def _matmul_launch():
    a, b, c = torch.randn(16, 24, dtype=torch.float16), torch.randn(24, 20, dtype=torch.float16), \
        torch.empty(16, 20, dtype=torch.float16)
    args = {"a_ptr": a, "b_ptr": b, "c_ptr": c, "M": 16, "N": 20, "K": 24, "stride_am": 24, "stride_ak": 1,
            "stride_bk": 20, "stride_bn": 1, "stride_cm": 20, "stride_cn": 1, "ACTIVATION": ""}
    grid = lambda META: (-(-16 // META["BLOCK_SIZE_M"]) * -(-20 // META["BLOCK_SIZE_N"]),)  # noqa: E731
    return args, grid, {"M": 16, "N": 20, "K": 24}, "float16"


def _layer_norm_launch():
    m, n = 4, 40
    args = {"X": torch.randn(m, n), "Y": torch.empty(m, n), "W": torch.rand(n), "B": torch.rand(n),
            "Mean": torch.empty(m), "Rstd": torch.empty(m), "stride": n, "N": n, "eps": 1e-5}
    return args, (m,), {"N": n}, "float32"


def _double_launch():
    n = 100
    args = {"x_ptr": torch.randn(n), "y_ptr": torch.empty(n), "N": n}
    grid = lambda META: (-(-n // META["BLOCK"]),)  # noqa: E731
    return args, grid, {"N": n}, "float32"


# drop-in kernel -> a launch as its caller makes it: (arguments by name, grid, key dims, dtype)
DROPINS = {dropins.MATMUL: _matmul_launch, dropins.LAYER_NORM: _layer_norm_launch, reported.NAME: _double_launch}


def _registered() -> list[str]:
    return [n for n in registry.names() if registry.KERNELS.load(n).__module__ != BROKEN_ON_PURPOSE
            and not n.startswith("tests.kernels.")]


def _dropin_kernels() -> list[str]:
    return [k.name for module in [m for n, m in sys.modules.items() if n.startswith("tests.kernels.")]
            for k in vars(module).values() if isinstance(k, DropinKernel)]


def test_every_kernel_is_covered():
    assert set(registry.KERNELS.builtin) < set(_registered())  # the built-ins and the test kernels
    assert sorted(_dropin_kernels()) == sorted(DROPINS), "give each drop-in kernel a launch in DROPINS"


def _tiny_key(spec) -> TuningKey:
    dims, dtype = spec.tiny_shape or ({n: 16 for n in spec.key_names}, spec.dtypes[0])
    return spec.make_key(dims, dtype)


def _trial(spec, key: TuningKey, config: dict, signature: dict | None = None) -> dict:
    req = TrialRequest(kernel=spec.name, key=key.to_json(), config=config, device="cpu", arch=TARGET.arch,
                       warmup=0, reps=1, signature=signature)
    return run_trial(TrialRequest.from_json(json.loads(json.dumps(req.to_json())))).to_json()


def _refused(spec, key: TuningKey, default: dict) -> dict:
    """A configuration check() refuses: the space's first one it refuses, else one value off the space."""
    for config in spec.configs(TARGET):
        if spec.check(config, key, TARGET) is not None:
            return config
    name, values = next((p, v) for p, v in spec.space(TARGET).items() if all(isinstance(x, int) for x in v))
    return {**default, name: 2 * max(values) + 1}


def _conforms(spec, key: TuningKey, signature: dict | None = None) -> None:
    # the key and space round-trip: JSON (messages, rows) and the label (`--shape`, `--dtype`)
    assert TuningKey.from_json(json.loads(json.dumps(key.to_json()))) == key
    shape, dtype = key.label().rsplit(" ", 1)
    assert spec.make_key(parse_shape(shape), dtype).stable_hash == key.stable_hash
    space = spec.space(TARGET)
    assert {p: tuple(v) for p, v in json.loads(json.dumps(space)).items()} == space
    # a valid default, whose output agrees with the reference
    default = spec.default(key, TARGET)
    assert config_hash(json.loads(json.dumps(default))) == config_hash(default)
    assert spec.check(default, key, TARGET) is None
    got = _trial(spec, key, default, signature)
    assert got["status"] == "ok", got
    # check() agrees with launch: refused, never launched; accepted, launched and right
    refused = _refused(spec, key, default)
    got = _trial(spec, key, refused, signature)
    assert (got["status"], got["message"]) == ("invalid", spec.check(refused, key, TARGET)), got
    valid = [c for c in spec.valid_configs(key, TARGET) if config_hash(c) != config_hash(default)]
    for config in random.Random(0).sample(valid, min(SAMPLE, len(valid))):
        got = _trial(spec, key, config, signature)
        assert got["status"] == "ok", got


@pytest.mark.parametrize("kernel", _registered())
def test_a_registered_kernel_keeps_the_contract(kernel):
    spec = registry.get(kernel)
    _conforms(spec, _tiny_key(spec))


@pytest.mark.parametrize("kernel", sorted(DROPINS))
def test_a_dropin_kernel_keeps_the_contract(kernel):
    spec = registry.get(kernel)
    args, grid, dims, dtype = DROPINS[kernel]()
    _conforms(spec, spec.make_key(dims, dtype), signature_of(spec.kernel, args, grid))
