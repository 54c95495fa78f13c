"""The kernel contract (search_spaces/base.py): one rule for a launch's vendor, exports declared by
the kernels, versions hashed from the code that decides a kernel's behaviour, and the inputs a
request describes made by the kernel, not the harness (issue 29, point 3)."""
import ast
import importlib
import io
import re
import shutil
import sys
import tokenize
from pathlib import Path

import pytest
import torch

from devices.vendors import VENDORS, launch_vendor
from keys import SpecError
from search_spaces import registry
from search_spaces.base import KernelSpec
from tests.cli_helpers import ROOT, run_tuner
from tests.test_cli_errors import assert_one_line_error
from tuner.errors import UserError
from tuner.formats import declared, vllm, vllm_lora

VENDOR_NAMES = {v.name for v in VENDORS}


# ---- the vendor of a launch -----------------------------------------------------------------
@pytest.mark.parametrize("device_type, hip, cuda, vendor", [
    ("cpu", None, "12.8", "cpu"), ("cpu", "6.4.1", None, "cpu"),  # the interpreter, whatever the build
    ("cuda", "6.4.1", None, "amd"),  # ROCm's torch calls its GPUs "cuda" too
    ("cuda", None, "12.8", "nvidia")])
def test_one_rule_names_the_vendor_of_a_launch(device_type, hip, cuda, vendor):
    assert launch_vendor(device_type, hip, cuda) == vendor


@pytest.mark.parametrize("device_type, hip, cuda", [("xpu", None, None), ("cuda", None, None), ("mps", None, "12.8")])
def test_a_device_no_vendor_runs_is_refused_not_taken_for_nvidia(device_type, hip, cuda):
    with pytest.raises(SpecError, match=f"no vendor here launches Triton kernels on {device_type} tensors"):
        launch_vendor(device_type, hip, cuda)


def test_a_kernel_asks_the_rule_for_its_tensors():
    assert KernelSpec.vendor_of(torch.zeros(1)) == KernelSpec.vendor_of("cpu") == "cpu"


def test_the_fp8_type_a_kernel_computes_in_is_the_vendor_s_fact(monkeypatch):
    """A third vendor brings its own fp8 type in devices/vendors.py; no kernel falls back to NVIDIA's."""
    from devices import vendors
    from search_spaces.fused_moe_quant import fp8_dtype

    assert fp8_dtype("amd") is torch.float8_e4m3fnuz
    assert fp8_dtype("nvidia") is fp8_dtype("cpu") is torch.float8_e4m3fn
    assert all(isinstance(getattr(torch, v.fp8), torch.dtype) for v in VENDORS)

    class Other(vendors.Nvidia):
        name, fp8 = "other", "float8_e5m2"

    monkeypatch.setitem(vendors._BY_NAME, "other", Other())
    assert fp8_dtype("other") is torch.float8_e5m2


def _kernel_module_files() -> list[Path]:
    """Every built-in kernel module, the test kernels, and the module of every registered kernel."""
    files = {p for p in (ROOT / "search_spaces").glob("*.py") if p.name not in ("base.py", "registry.py")}
    files |= set((ROOT / "tests" / "kernels").glob("*.py"))
    for name in registry.names():
        files.add(Path(sys.modules[registry.KERNELS.load(name).__module__].__file__))
    return sorted(files)


def _decides_vendor(node: ast.AST) -> bool:
    """torch.version read (the build's hip or cuda), a tensor's is_cuda, or a choice between vendor
    names. (A Target's is_hip is the device's vendor as devices/ named it: allowed.)"""
    if isinstance(node, ast.Attribute) and node.attr == "version" and getattr(node.value, "id", None) == "torch":
        return True
    if isinstance(node, ast.Attribute) and node.attr == "is_cuda":
        return True
    return isinstance(node, ast.IfExp) and any(isinstance(b, ast.Constant) and b.value in VENDOR_NAMES
                                               for b in (node.body, node.orelse))


def test_no_kernel_module_decides_its_vendor_itself():
    found = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in _kernel_module_files()
             for n in ast.walk(ast.parse(p.read_text())) if _decides_vendor(n)]
    assert len(_kernel_module_files()) >= 15 and found == []


# ---- exports declared by the kernels ----------------------------------------------------------
def _with_modules(*modules):
    before = registry.KERNELS.modules
    registry.configure((*before, *modules))
    yield
    registry.configure(before)


@pytest.fixture
def export_kernels():
    yield from _with_modules("tests.kernels.exports")


@pytest.fixture
def unsaid_kernel():
    yield from _with_modules("tests.kernels.exports_unsaid")


def _entry(kernel, dims, config, dtype="bfloat16"):
    version = registry.get(kernel).version
    return {"kernel": kernel, "kernel_version": version, "key": {"kernel": kernel, "version": version, "dims": dims,
            "dtype": dtype}, "dtype": dtype, "device_class": "h100-sxm-80gb", "device_names": ["NVIDIA H100 80GB HBM3"],
            "config": config, "tuned_at": "2026-12-01T00:00:00+00:00"}


MOE = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1, "num_warps": 4, "num_stages": 3}


def test_a_kernel_declaring_an_export_is_written_by_it(export_kernels, tmp_path):
    assert declared("vllm") == ("fused_moe", "fused_moe_quant", "other_moe")
    assert declared("sglang") == ("fused_moe", "fused_moe_quant")  # other_moe declares vLLM's only
    dims = {"E": 8, "N": 64, "K": 128, "topk": 2, "M": 16}
    written = vllm.write([_entry("other_moe", dims, MOE), _entry("softmax", {"M": 16, "N": 64}, {"BLOCK": 64})],
                         tmp_path)
    assert written.count == 1  # softmax declares no export: left out
    assert [p.name for p in tmp_path.iterdir()] == ["E=8,N=64,device_name=NVIDIA_H100_80GB_HBM3.json"]
    docs, tuned, _ = vllm_lora.files([_entry("other_shrink", {"M": 16, "K": 256, "RANK": 16, "SLICES": 1,
                                                               "LORAS": 2}, {"BLOCK_M": 16})], slices=(1,))
    assert tuned == 1 and set(docs) == {"NVIDIA_H100_80GB_HBM3_OTHER.json"}


def test_a_kernel_declaring_an_export_without_what_it_needs_is_refused(unsaid_kernel):
    with pytest.raises(UserError, match="kernel unsaid_lora declares the vllm-lora export but no vllm_lora_op"):
        vllm_lora.files([])


def test_an_export_of_a_kernel_not_declaring_the_format_is_one_line(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = run_tuner(["export", "--format", "vllm", "--kernel", "softmax", "-o", str(out)], tmp_path / "home")
    assert_one_line_error(proc, "kernel softmax does not export to vllm (its KernelSpec.exports does not name it); "
                                "vllm writes fused_moe, fused_moe_quant")
    assert list(out.iterdir()) == []


# ---- versions: the code that decides behaviour, normalized ---------------------------------
def _copy_package(tmp_path: Path, name: str, edit=lambda path, text: text) -> dict[str, str]:
    """search_spaces/ copied as package `name` (each module through edit), imported: kernel -> version."""
    root = tmp_path / name
    shutil.copytree(ROOT / "search_spaces", root, ignore=shutil.ignore_patterns("__pycache__"))
    for path in root.glob("*.py"):
        text = path.read_text().replace("search_spaces.", f"{name}.").replace("from search_spaces import",
                                                                              f"from {name} import")
        path.write_text(edit(path, text))
    sys.path.insert(0, str(tmp_path))
    try:
        out = {}
        for kernel, where in registry.KERNELS.builtin.items():
            module, _, cls = where.partition(":")
            out[kernel] = getattr(importlib.import_module(module.replace("search_spaces", name, 1)), cls)().version
        return out
    finally:
        sys.path.remove(str(tmp_path))


def _commented(path: Path, text: str) -> str:
    """text with a comment at the end of every line that is not inside a string, and every
    docstring's first line changed."""
    ends = {t.start[0] for t in tokenize.generate_tokens(io.StringIO(text).readline)
            if t.type in (tokenize.NEWLINE, tokenize.NL)}
    lines = text.splitlines()
    lines = [f"{line}  # a note added in review" if i + 1 in ends else line for i, line in enumerate(lines)]
    return re.sub(r'(^|\s)"""(?=[A-Za-z])', r'\1"""Said otherwise: ', "\n".join(lines) + "\n")


def test_a_comment_or_docstring_anywhere_leaves_every_version(tmp_path):
    built_in = {k: registry.get(k).version for k in registry.KERNELS.builtin}
    assert _copy_package(tmp_path, "ss_copy") == built_in  # the same code under another name
    assert _copy_package(tmp_path, "ss_noted", _commented) == built_in


def test_the_lora_tile_model_counts_in_both_lora_versions_only(tmp_path):
    def tile_model(path, text):
        if path.name != "lora.py":
            return text
        assert text.count("+ (0 if target.is_hip else 1024)") == 1
        return text.replace("+ (0 if target.is_hip else 1024)", "+ (0 if target.is_hip else 2048)")

    built_in = {k: registry.get(k).version for k in registry.KERNELS.builtin}
    edited = _copy_package(tmp_path, "ss_tile", tile_model)
    assert {k for k in built_in if edited[k] != built_in[k]} == {"lora_shrink", "lora_expand"}


# ---- inputs as a request describes them -------------------------------------------------------
def test_a_routing_is_the_kernels_to_take_or_refuse():
    moe, soft = registry.get("fused_moe"), registry.get("softmax")
    key = moe.make_key({"E": 4, "N": 32, "K": 32, "topk": 2, "M": 8}, "float32")
    skew = moe.trial_inputs(key, "cpu", 0, "skewed")
    assert not torch.equal(skew.topk_ids, moe.trial_inputs(key, "cpu", 0).topk_ids)
    with pytest.raises(SpecError, match="softmax has no routing 'skewed'; it routes no tokens"):
        soft.trial_inputs(soft.make_key({"M": 4, "N": 8}, "float32"), "cpu", 0, "skewed")
