"""Kernels written as a user would (the Triton tutorials' fused softmax and layer-norm forward,
fp32 only): registered, listed, tuned, and served by @tuned through a key mapping or a key
function; grid-only entries reach the grid only; each kernel's version is its own code's."""
import importlib
import json
import subprocess
import sys

import pytest

from tests.cli_helpers import ROOT, run_json, tuner_env
from tests.test_runtime import _entry, _key, _live_fp, _write_bundle, live_env  # noqa: F401
from tuner import runtime

TUTORIAL = "tests.kernels.tutorial"


def test_the_tutorial_softmax_is_served_through_a_key_mapping(live_env, monkeypatch, tmp_path):  # noqa: F811
    import torch

    from tests.kernels.tutorial import softmax_kernel
    from tuner.runtime import tuned

    stored = {"BLOCK_SIZE": 128, "num_warps": 1, "num_stages": 2, "PROGRAMS": 4}
    _write_bundle(tmp_path / "b.json", [_entry(_key("tutorial_softmax", M=48, N=100), stored, _live_fp())])
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(tmp_path / "b.json"))
    live_env()
    kernel = tuned("tutorial_softmax", key={"M": "n_rows", "N": "n_cols"})(softmax_kernel)
    x = torch.randn(48, 100)
    y = torch.empty_like(x)
    grids = []

    def grid(cfg):
        grids.append(dict(cfg))
        return (min(cfg["PROGRAMS"], 48), 1, 1)

    kernel[grid](y, x, x.stride(0), y.stride(0), 48, 100)
    assert torch.allclose(y, torch.softmax(x, -1), atol=1e-5)
    assert grids == [stored]  # the grid callable gets every entry, PROGRAMS included
    # the kernel gets its constexprs and launch options, never the grid-only PROGRAMS (a GPU
    # launch raises KeyError for an argument it does not take)
    assert kernel.launch_kwargs(y, x, x.stride(0), y.stride(0), 48, 100) == {"BLOCK_SIZE": 128, "num_stages": 2,
                                                                              "num_warps": 1}
    # keyword arguments are read too
    kernel[grid](y, x, x.stride(0), y.stride(0), n_rows=48, n_cols=100)
    assert runtime.explain("tutorial_softmax", M=48, N=100, dtype="float32").level == "exact"


def test_the_tutorial_layer_norm_is_served_through_a_key_function(live_env, monkeypatch, tmp_path):  # noqa: F811
    """Its kernel has N but no M (one program per row): the key function reads M from X."""
    import torch

    from tests.kernels.tutorial import _layer_norm_fwd_fused
    from tuner.runtime import tuned

    stored = {"BLOCK_SIZE": 64, "num_warps": 1}
    _write_bundle(tmp_path / "b.json", [_entry(_key("tutorial_layer_norm", M=8, N=300), stored, _live_fp())])
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(tmp_path / "b.json"))
    live_env()
    kernel = tuned("tutorial_layer_norm", key=lambda a: {"M": a["X"].shape[0], "N": a["N"]})(_layer_norm_fwd_fused)
    x, w, b = torch.randn(8, 300), torch.rand(300), torch.rand(300)
    y, mean, rstd = torch.empty_like(x), torch.empty(8), torch.empty(8)
    kernel[(8,)](x, y, w, b, mean, rstd, x.stride(0), 300, 1e-5)
    assert torch.allclose(y, torch.nn.functional.layer_norm(x, (300,), w, b, 1e-5), atol=1e-4)
    assert kernel.config_for((x, y, w, b, mean, rstd, x.stride(0), 300, 1e-5), {}) == stored


def test_fp32_only_kernels_are_listed_with_the_others(tmp_path):
    rows = run_json(["kernels"], tmp_path, TUNER_KERNEL_MODULES=TUTORIAL)
    by_name = {r["name"]: r for r in rows}
    assert {"matmul", "softmax", "tutorial_softmax", "tutorial_layer_norm"} <= set(by_name)
    for name in ("tutorial_softmax", "tutorial_layer_norm"):
        assert by_name[name]["dtypes"] == ["float32"] and by_name[name]["counted_at"] == "float32"
        assert all(isinstance(v, int) and v > 0 for v in by_name[name]["valid_configs"].values())


SERVE = r"""
import json, torch
from tests.kernels.tutorial import _layer_norm_fwd_fused
from tuner import runtime
from tuner.runtime import tuned
kernel = tuned("tutorial_layer_norm", key=lambda a: {"M": a["X"].shape[0], "N": a["N"]})(_layer_norm_fwd_fused)
x, w, b = torch.randn(16, 256), torch.rand(256), torch.rand(256)
y, mean, rstd = torch.empty_like(x), torch.empty(16), torch.empty(16)
kernel[(16,)](x, y, w, b, mean, rstd, x.stride(0), 256, 1e-5)
runtime.settle(60)  # the first launch may have had the default while the database was opened
kernel[(16,)](x, y, w, b, mean, rstd, x.stride(0), 256, 1e-5)
assert torch.allclose(y, torch.nn.functional.layer_norm(x, (256,), w, b, 1e-5), atol=1e-4)
answer = runtime.explain("tutorial_layer_norm", M=16, N=256, dtype="float32")
print(json.dumps({"level": answer.level, "config": dict(kernel.config_for((x, y, w, b, mean, rstd, 256, 256, 1e-5), {}))}))
"""


@pytest.mark.slow
def test_an_outside_kernel_tunes_and_is_served_by_tuned(tmp_path):
    home = tmp_path / "home"
    tuned = run_json(["tune", "tutorial_layer_norm", "--shape", "M=16,N=256", "--trials", "4", "--seed", "0",
                      "--device", "cpu"], home, TUNER_KERNEL_MODULES=TUTORIAL)
    best = tuned["keys"][0]["config"]
    assert best
    env = tuner_env(home, TUNER_DEVICE="cpu", TUNER_KERNEL_MODULES=TUTORIAL, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", SERVE], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"level": "exact", "config": best}


def test_editing_one_kernel_of_a_module_leaves_the_others_version(tmp_path, monkeypatch):
    """The tutorial module holds two kernels; edit the softmax's jit function, then a constant and
    a helper only the layer norm's code names: each edit changes one version."""
    source = (ROOT / "tests" / "kernels" / "tutorial.py").read_text()

    def versions(text: str, name: str) -> dict:
        (tmp_path / f"{name}.py").write_text(text)
        module = importlib.import_module(name)
        return {cls.name: cls().version for cls in (module.SoftmaxTutorial, module.LayerNormTutorial)}

    monkeypatch.syspath_prepend(str(tmp_path))
    base = versions(source, "tut_base")
    edited = versions(source.replace("softmax_output = numerator / denominator",
                                     "softmax_output = numerator * (1.0 / denominator)"), "tut_softmax_edit")
    assert edited["tutorial_softmax"] != base["tutorial_softmax"]
    assert edited["tutorial_layer_norm"] == base["tutorial_layer_norm"]
    edited = versions(source.replace("        x_hat = (x - mean) * rstd", "        x_hat = (x - mean) * rstd * 1.0"),
                      "tut_norm_edit")
    assert edited["tutorial_layer_norm"] != base["tutorial_layer_norm"]
    assert edited["tutorial_softmax"] == base["tutorial_softmax"]
    # _warps is named by both: an edit there is an edit of both kernels
    edited = versions(source.replace("return (1, 4) if target.is_interpreter", "return (1, 2) if target.is_interpreter"),
                      "tut_shared_edit")
    assert all(edited[k] != base[k] for k in base)
    # an identical copy under another module name is the same code: the same versions
    assert versions(source, "tut_copy") == base
