"""Device classes from recorded torch properties, and the stack fingerprint."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from devices.classes import (
    ALIASES,
    CPU_INTERPRETER,
    KNOWN_DEVICES,
    DeviceClass,
    classify,
    matches,
    nominal_memory_gb,
    resolve_device_class,
)
from devices.fingerprint import StackFingerprint, live_fingerprint, parse_override
from devices.probe import probe
from keys import SpecError
from workers.queues import queue_for, queue_names

PROPS = Path(__file__).parent / "data" / "device_props"
ROOT = Path(__file__).resolve().parents[1]


def props(name: str) -> dict:
    return json.loads((PROPS / f"{name}.json").read_text())


# file, slug, vendor, arch, aliases, compute units, memory, warp size, shared memory per block
RECORDED = [
    ("h100_sxm", "h100-sxm-80gb", "nvidia", "sm_90", ("h100",), 132, 80, 32, 232448),
    ("h100_pcie", "h100-pcie-80gb", "nvidia", "sm_90", ("h100",), 114, 80, 32, 232448),
    ("h100_nvl", "h100-nvl-94gb", "nvidia", "sm_90", ("h100",), 132, 94, 32, 232448),
    ("h200", "h200-141gb", "nvidia", "sm_90", ("h200",), 132, 141, 32, 232448),
    ("a100_pcie_40gb", "a100-pcie-40gb", "nvidia", "sm_80", ("a100",), 108, 40, 32, 166912),
    ("a100_sxm_80gb", "a100-sxm-80gb", "nvidia", "sm_80", ("a100",), 108, 80, 32, 166912),
    ("mi300x", "mi300x-192gb", "amd", "gfx942", ("mi300x",), 304, 192, 64, 65536),
    ("mi308x", "mi308x-192gb", "amd", "gfx942", ("mi308x",), 80, 192, 64, 65536),
    ("mi325x", "mi325x-256gb", "amd", "gfx942", ("mi325x",), 304, 256, 64, 65536),
    ("rtx_4090", "nvidia-sm_89-128sm-24gb", "nvidia", "sm_89", (), 128, 24, 32, 101376),
]


@pytest.mark.parametrize("file,slug,vendor,arch,aliases,cus,mem,warp,smem", RECORDED, ids=[r[0] for r in RECORDED])
def test_recorded_device_is_classified(file, slug, vendor, arch, aliases, cus, mem, warp, smem):
    dc = classify(props(file))
    assert (dc.slug, dc.vendor, dc.arch, dc.aliases) == (slug, vendor, arch, aliases)
    assert (dc.compute_units, dc.memory_gb) == (cus, mem)
    target = dc.target
    assert (target.vendor, target.arch, target.warp_size, target.smem_bytes) == (vendor, arch, warp, smem)
    assert target.compute_units == cus


def test_the_name_is_not_trusted():
    # Old ROCm reported every Instinct as "AMD Radeon Graphics"; drivers rename NVIDIA cards too.
    for file, slug in [("mi300x", "mi300x-192gb"), ("mi325x", "mi325x-256gb"), ("mi308x", "mi308x-192gb")]:
        assert classify({**props(file), "name": "AMD Radeon Graphics"}).slug == slug
    assert classify({**props("h100_sxm"), "name": "NVIDIA H100 PCIe"}).slug == "h100-sxm-80gb"
    assert classify({**props("h200"), "name": ""}).slug == "h200-141gb"


def test_name_breaks_ties_only_where_the_numbers_cannot():
    assert classify({**props("h200"), "name": "NVIDIA H200 NVL"}).slug == "h200-nvl-141gb"
    assert classify({**props("a100_pcie_40gb"), "name": "NVIDIA A100-SXM4-40GB"}).slug == "a100-sxm-40gb"
    assert classify({**props("a100_sxm_80gb"), "name": "NVIDIA A100 80GB PCIe"}).slug == "a100-pcie-80gb"


def test_gfx_feature_suffix_is_dropped():
    for gcn in ["gfx942:sramecc+:xnack-", "gfx942", "GFX942:xnack+"]:
        assert classify({**props("mi300x"), "gcnArchName": gcn}).arch == "gfx942"
    # is_hip is optional: a gfx arch alone says AMD.
    no_flag = {k: v for k, v in props("mi300x").items() if k != "is_hip"}
    assert classify(no_flag).slug == "mi300x-192gb"


def test_unknown_devices_get_a_generic_slug_and_a_target():
    mi300a = {**props("mi300x"), "multi_processor_count": 228, "total_memory": 128 << 30}
    assert classify(mi300a).slug == "amd-gfx942-228cu-128gb"
    b200 = {**props("h100_sxm"), "name": "NVIDIA B200", "major": 10, "minor": 0,
            "multi_processor_count": 148, "total_memory": 191_000_000_000}
    dc = classify(b200)
    assert dc.slug == "nvidia-sm_100-148sm-180gb"
    assert (dc.target.warp_size, dc.target.smem_bytes) == (32, 49152)  # no row for sm_100: generic
    mi100 = {**props("mi300x"), "gcnArchName": "gfx908:sramecc+:xnack-", "multi_processor_count": 120,
             "total_memory": 32 << 30}
    assert classify(mi100).target.warp_size == 64


def test_memory_rounds_to_nominal_sizes():
    assert nominal_memory_gb(85031714816) == 80  # H100, 79.2 GiB
    assert nominal_memory_gb(143771 << 20) == 141  # H200, 140.4 GiB
    assert nominal_memory_gb(205822885888) == 192  # MI300X, 191.7 GiB
    assert nominal_memory_gb(274877906944) == 256  # MI325X, exactly 256 GiB
    assert nominal_memory_gb(46068 << 20) == 48  # L40S with ECC, 45 GiB
    assert nominal_memory_gb(int(5.5 * (1 << 30))) == 6


def test_device_class_json_round_trip_and_hash():
    for dc in KNOWN_DEVICES + (classify(props("rtx_4090")),):
        again = DeviceClass.from_json(json.loads(json.dumps(dc.to_json())))
        assert again == dc and again.stable_hash == dc.stable_hash
    assert len({dc.stable_hash for dc in KNOWN_DEVICES}) == len(KNOWN_DEVICES)


def test_aliases_resolve_to_families():
    assert resolve_device_class("h100") == "h100"
    assert resolve_device_class(" H100 ") == "h100"
    assert resolve_device_class("mi300x") == "mi300x"
    assert resolve_device_class("cpu") == "cpu"
    assert resolve_device_class("h100-sxm-80gb") == "h100-sxm-80gb"
    assert resolve_device_class("nvidia-sm_89-128sm-24gb") == "nvidia-sm_89-128sm-24gb"
    assert set(ALIASES["h100"]) == {"h100-sxm-80gb", "h100-pcie-80gb", "h100-nvl-94gb"}
    assert matches("h100", "h100-nvl-94gb") and matches("H100", "h100-sxm-80gb")
    assert not matches("h100", "h200-141gb") and not matches("h100-sxm-80gb", "h100-pcie-80gb")
    assert matches("cpu", "cpu-interpreter")


def test_unknown_alias_says_which_are_known():
    with pytest.raises(SpecError) as err:
        resolve_device_class("h900")
    message = str(err.value)
    assert "\n" not in message and "'h900'" in message
    assert all(alias in message for alias in ("h100", "mi300x", "cpu"))


def test_queues_a_worker_listens_on():
    h100 = classify(props("h100_sxm"))
    assert queue_names(h100) == ("tune.h100-sxm-80gb", "tune.h100")
    assert queue_names(CPU_INTERPRETER) == ("tune.cpu-interpreter", "tune.cpu")
    assert queue_names(classify(props("rtx_4090"))) == ("tune.nvidia-sm_89-128sm-24gb",)
    # A job for a family lands on a queue every member listens on.
    assert queue_for("H100") in queue_names(classify(props("h100_nvl")))


def test_probe_cpu_is_the_interpreter():
    dc, recorded = probe("cpu")
    assert dc == CPU_INTERPRETER and dc.slug == "cpu-interpreter" and dc.compute_units == 1
    assert dc.target.is_interpreter
    assert classify(recorded) == dc


def test_probe_without_a_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SpecError, match="no CUDA/ROCm device visible.*--device cpu"):
        probe("cuda")
    with pytest.raises(SpecError, match="--device cpu"):
        probe("cuda:1")
    assert probe(None)[0] == CPU_INTERPRETER


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cuda0", ""])
def test_probe_rejects_unknown_devices(device):
    with pytest.raises(SpecError, match="use cpu, cuda or cuda:N"):
        probe(device)


def test_fingerprint_hash_is_stable():
    a = StackFingerprint("555.42.06", "cuda-12.8", "3.6.0", "2.13.0")
    assert a.hash == StackFingerprint("555.42.06", "cuda-12.8", "3.6.0", "2.13.0").hash
    assert re.fullmatch(r"[0-9a-f]{16}", a.hash)
    assert StackFingerprint("560.28.03", "cuda-12.8", "3.6.0", "2.13.0").hash != a.hash
    assert StackFingerprint.from_json(json.loads(json.dumps(a.to_json()))) == a
    assert a.fields() == {"driver": "555.42.06", "runtime": "cuda-12.8", "triton": "3.6.0", "torch": "2.13.0"}


def test_live_fingerprint_on_the_cpu():
    from importlib import metadata

    fp = live_fingerprint(CPU_INTERPRETER)
    assert (fp.driver, fp.runtime) == ("none", "none")
    assert fp.triton == metadata.version("triton") and fp.torch == metadata.version("torch")
    assert live_fingerprint(CPU_INTERPRETER) == fp


def test_override_simulates_a_driver_update():
    live = live_fingerprint(CPU_INTERPRETER)
    updated = live_fingerprint(CPU_INTERPRETER, "driver=555.1")
    assert updated.driver == "555.1" and updated.hash != live.hash
    both = live_fingerprint(CPU_INTERPRETER, " driver=555.1 , triton=3.7.0 ")
    assert (both.driver, both.triton, both.torch) == ("555.1", "3.7.0", live.torch)
    # The override is applied on top of the cached probe, never stored in it.
    assert live_fingerprint(CPU_INTERPRETER) == live
    assert parse_override("") == {} and parse_override("driver=1,") == {"driver": "1"}


@pytest.mark.parametrize("bad,says", [
    ("driver", "field=value"), ("driver=", "field=value"), ("=555", "field=value"),
    ("gpu=h100", "unknown field 'gpu'"), ("driver=1,driver=2", "twice"),
])
def test_bad_override_is_one_line_spec_error(bad, says):
    with pytest.raises(SpecError, match=says) as err:
        live_fingerprint(CPU_INTERPRETER, bad)
    assert "\n" not in str(err.value)


def test_importing_stays_light():
    code = ("import sys, devices.classes, devices.fingerprint; "
            "print(','.join(m for m in ('torch', 'triton', 'celery', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_class_memory_is_what_every_member_of_the_class_has():
    from devices.classes import class_memory_bytes

    gib = 1 << 30
    assert class_memory_bytes("h100-sxm-80gb") == 80 * gib
    assert class_memory_bytes("a100") == 40 * gib  # the 40 GB and 80 GB A100s share the alias
    assert class_memory_bytes("nvidia-sm_89-128sm-24gb") == 24 * gib
    assert class_memory_bytes("cpu") is None  # interpreter hosts differ: nothing to count on


def test_a_trial_s_memory_grows_with_the_shape_and_the_input_sets():
    from search_spaces import registry

    mm = registry.get("matmul")
    key = mm.make_key({"M": 4096, "N": 4096, "K": 4096}, "bfloat16")
    one, four = mm.trial_bytes(key), mm.trial_bytes(key, 4)
    assert 0.3e9 < one < 1e9 and four - one == 3 * 2 * 4096 * 4096 * 2  # three more sets of A and B
