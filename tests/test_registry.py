"""The lazy kernel registry: built-ins, user modules (TUNER_KERNEL_MODULES), entry points.

Registry state is cached per process, so each way of registering is checked in a fresh
interpreter started in the repository root.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from search_spaces import registry
from keys import SpecError
from search_spaces.base import KernelSpec
from search_spaces.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, extra_env: dict[str, str] | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TUNER_KERNEL_MODULES", "PYTHONPATH")}
    env.update(extra_env or {})
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


FIND_AXPY = """
import json
from search_spaces import registry
from tuner import settings
settings.configure_plugins(settings.get())  # as the CLI, a worker and the runtime do
spec = registry.get("ext_axpy")
print(json.dumps({"names": registry.names(), "module": type(spec).__module__, "name": spec.name}))
"""


def test_builtin_kernels_are_registered():
    assert {"matmul", "softmax"} <= set(registry.names())
    assert registry.get("matmul").name == "matmul" and registry.get("softmax").key_names == ("M", "N")


def test_a_module_named_in_tuner_kernel_modules_is_found():
    got = run_python(FIND_AXPY, {"TUNER_KERNEL_MODULES": "tests.kernels.external"})
    assert got["module"] == "tests.kernels.external" and got["name"] == "ext_axpy"
    assert {"ext_axpy", "matmul", "softmax"} <= set(got["names"])


def test_an_entry_point_in_group_tuner_kernels_is_found(tmp_path):
    # what `pip install` of a package declaring the entry point leaves on sys.path
    dist = tmp_path / "tuner_ext_kernels-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tuner-ext-kernels\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tuner.kernels]\next_axpy = tests.kernels.external:ExtAxpy\n")
    got = run_python(FIND_AXPY, {"PYTHONPATH": str(tmp_path)})
    assert "ext_axpy" in got["names"] and got["module"] == "tests.kernels.external"


def test_unknown_kernel_lists_the_known_ones():
    with pytest.raises(SpecError, match="unknown kernel 'nope'.*matmul, softmax"):
        registry.get("nope")


def fresh(modules: str) -> Registry:
    reg = Registry("kernel", KernelSpec, registry.KERNELS.builtin, "tuner.kernels", "TUNER_KERNEL_MODULES")
    reg.configure(modules)
    return reg


def test_unimportable_kernel_module_is_a_spec_error():
    with pytest.raises(SpecError, match="no_such_module"):
        fresh("tests.kernels.no_such_module").names()


@pytest.mark.parametrize("source, error", [("def broken(:\n", "SyntaxError"),
                                           ("raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here")])
def test_a_kernel_module_that_fails_on_import_is_one_spec_error(tmp_path, monkeypatch, source, error):
    """Not only ImportError: whatever a user's module raises at import is one line naming it."""
    (tmp_path / "user_kernels_bad.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = fresh("user_kernels_bad")
    with pytest.raises(SpecError, match=f"cannot import kernel module 'user_kernels_bad'.*{error}"):
        reg.names()
    assert reg.load("matmul").name == "matmul"  # a built-in is found without importing the user module


def test_importing_the_registry_imports_no_gpu_stack():
    got = run_python("""
import json, sys
from search_spaces import registry
names = registry.names()
print(json.dumps({"names": names, "heavy": sorted(m for m in ("torch", "triton") if m in sys.modules)}))
""")
    assert got["heavy"] == [] and {"matmul", "softmax"} <= set(got["names"])


def test_reading_every_built_in_kernel_imports_no_torch():
    """A kernel's space, key, constraints, default and version are what the CLI's checks, `tuner
    submit`, `tuner kernels` and a worker's main process read: none of it imports torch (~3 s of
    CPU a process); the first input made does."""
    got = run_python("""
import json, sys
from search_spaces import registry, target_for
target, seen = target_for("sm_90"), {}
small = {"STAGE": 1, "topk": 2, "SLICES": 1, "LORAS": 2, "RANK": 16}
for name in registry.names():
    spec = registry.get(name)
    dtype = "bfloat16" if "bfloat16" in spec.dtypes else spec.dtypes[0]  # fused_moe_quant's schemes
    key = spec.make_key({d: small.get(d, 64) for d in spec.key_names}, dtype)
    seen[name] = (len(spec.valid_configs(key, target)), spec.check(spec.default(key, target), key, target), spec.version)
before = "torch" in sys.modules
spec = registry.get("matmul")
spec.make_inputs(spec.make_key({"M": 8, "N": 8, "K": 8}, "float32"), "cpu", 0)
print(json.dumps({"before": before, "after": "torch" in sys.modules, "seen": seen}))
""", {"TRITON_INTERPRET": "1"})
    assert got["before"] is False and got["after"] is True, got
    assert {"matmul", "fused_moe", "lora_shrink", "flash_attention"} <= set(got["seen"])
    assert all(n > 0 and refusal is None for n, refusal, _ in got["seen"].values()), got["seen"]


def test_the_external_kernel_runs():
    # the user's kernel keeps the same contract as the built-ins (interpreter on the CPU)
    got = run_python("""
import json
from search_spaces import registry, target_for
registry.configure("tests.kernels.external")
spec = registry.get("ext_axpy")
target = target_for("interpreter")
key = spec.make_key({"N": 3000}, "float16")
inputs = spec.make_inputs(key, "cpu", 0)
out, ref = spec.launch(spec.default(key, target), inputs), spec.reference(inputs)
err = (out.float() - ref.float()).abs().max().item()
print(json.dumps({"err": err, "valid": len(spec.valid_configs(key, target))}))
""", {"TRITON_INTERPRET": "1"})
    assert got["err"] < 1e-2 and got["valid"] == 9
