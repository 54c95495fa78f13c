"""Nothing unchecked reaches a kernel: rows that a bundle file or a config server serves for the
very key asked (the exact level, which the runtime used to hand out as stored) with a softmax
block that computes wrong sums, a matmul tile outside its space, an extra EVIL parameter, a
num_warps of "4" and a GROUP_M of True (bool passes `True in (1, 4, 8)`, so only a type check
refuses it). Each gets the default, one warning per cause, and the config server's poisoned
rows never reach the copy kept on disk."""
import json
import logging

import pytest

from tests.test_runtime import _entry, _key, _live_fp, live_env  # noqa: F401  (the fixture)
from tests.test_runtime_client import bundle, servers  # noqa: F401  (the fixture)
from tuner import runtime

GOOD = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 1, "num_warps": 4, "num_stages": 1}
# (kernel, dims, stored configuration, the cause's words in its warning); float32 throughout, so
# that no good row of float32 is near enough to be served instead
WRONG_SUMS = {"BLOCK_SIZE": 16, "num_warps": 4, "num_stages": 1, "PROGRAMS": 4}  # a row is 1000 wide
TAMPERED = [
    ("tutorial_softmax", {"M": 8, "N": 1000}, WRONG_SUMS, "BLOCK_SIZE=16 must be N=1000 padded"),
    ("softmax", {"M": 8, "N": 1000}, {"BLOCK_SIZE": 16, "ROWS": 1, "num_warps": 4}, "BLOCK_SIZE=16 is outside"),
    ("matmul", {"M": 128, "N": 128, "K": 128}, dict(GOOD, BLOCK_M=48), "BLOCK_M=48"),
    ("matmul", {"M": 256, "N": 256, "K": 256}, dict(GOOD, EVIL=1), "EVIL is not a parameter"),
    ("matmul", {"M": 512, "N": 512, "K": 512}, dict(GOOD, num_warps="4"), "num_warps='4' is not an integer"),
    ("matmul", {"M": 1024, "N": 1024, "K": 1024}, dict(GOOD, GROUP_M=True), "GROUP_M=True is not an integer"),
    ("matmul", {"M": 2048, "N": 2048, "K": 2048}, dict(GOOD, EVIL=2), "EVIL is not a parameter"),  # same cause
]
HONEST = ("matmul", {"M": 64, "N": 64, "K": 64}, GOOD)  # float16: served exact


def _entries():
    fp = _live_fp()
    rows = [_entry(_key(kernel, **dims), config, fp) for kernel, dims, config, _ in TAMPERED]
    kernel, dims, config = HONEST
    return rows + [_entry(_key(kernel, "float16", **dims), config, fp)]


def _check_served(caplog):
    from search_spaces import registry

    with caplog.at_level(logging.WARNING, logger="tuner.runtime"):
        for _ in range(2):
            for kernel, dims, config, _cause in TAMPERED:
                answer = runtime.explain(kernel, **dims, dtype="float32")
                assert answer.level == "default", (kernel, dims, answer)
                spec = registry.get(kernel)
                assert answer.config == spec.default(spec.make_key(dims, "float32"), _target())
    kernel, dims, config = HONEST
    assert runtime.lookup(kernel, **dims, dtype="float16") == config
    warnings = [r.message for r in caplog.records if "refused" in r.message]
    for cause in {c for *_, c in TAMPERED}:
        assert sum(cause in w for w in warnings) == 1, (cause, warnings)
    assert len(warnings) == len({c for *_, c in TAMPERED}), warnings


def _target():
    from devices.probe import probe

    return probe("cpu")[0].target


def test_a_tampered_bundle_serves_defaults(live_env, monkeypatch, tmp_path, caplog):  # noqa: F811
    path = tmp_path / "tampered.json"
    path.write_bytes(bundle(*_entries()))
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(path))
    live_env()
    _check_served(caplog)


def test_the_softmax_computes_right_with_what_is_served(live_env, monkeypatch, tmp_path):  # noqa: F811
    """The tutorial's softmax holds a whole row in one block: BLOCK_SIZE 16 for rows of 1000 sums
    16 of them (wrong results, as in the report); what is served in its place computes torch's."""
    import torch

    from search_spaces import registry

    path = tmp_path / "tampered.json"
    path.write_bytes(bundle(*_entries()))
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(path))
    live_env()
    spec = registry.get("tutorial_softmax")
    x = spec.make_inputs(spec.make_key({"M": 8, "N": 1000}, "float32"), "cpu", seed=0)
    assert not torch.allclose(spec.launch(WRONG_SUMS, x), torch.softmax(x, dim=-1), atol=1e-3)  # the poison
    out = spec.launch(dict(runtime.lookup("tutorial_softmax", M=8, N=1000, dtype="float32")), x)
    torch.testing.assert_close(out, torch.softmax(x, dim=-1), atol=1e-4, rtol=1e-4)


def test_a_tampered_config_server_serves_defaults_and_its_copy_keeps_only_honest_rows(
        live_env, monkeypatch, servers, tmp_path, caplog):  # noqa: F811
    server = servers(body=bundle(*_entries()))
    monkeypatch.setenv("TUNER_CONFIG_URL", server.url)
    live_env()
    _check_served(caplog)
    (copy,) = (tmp_path / "config-url").iterdir()
    kept = [(e["kernel"], e["key"]["dims"], e["config"]) for e in json.loads(copy.read_text())["entries"]]
    assert kept == [HONEST]


@pytest.mark.parametrize("level", ["other_fingerprint", "nearest"])
def test_a_row_of_a_fallback_level_with_a_bool_is_refused(live_env, monkeypatch, tmp_path, level):  # noqa: F811
    """The same checks at the other levels, where the kernel's check() was asked before: a row with
    GROUP_M True (which check() takes for 1) of another fingerprint or a nearby shape is passed
    over, and the honest one behind it served."""
    fp = _live_fp() if level == "nearest" else "0" * 16
    dims = {"M": 256, "N": 256, "K": 256} if level == "nearest" else {"M": 128, "N": 128, "K": 128}
    honest = dict(GOOD, BLOCK_K=32)
    rows = [_entry(_key("matmul", **dims), dict(GOOD, GROUP_M=True), fp, tuned_at="2026-02-01T00:00:00+00:00"),
            _entry(_key("matmul", M=512, N=512, K=512) if level == "nearest" else _key("matmul", **dims),
                   honest, "1" * 16, tuned_at="2026-01-01T00:00:00+00:00")]
    path = tmp_path / "b.json"
    path.write_bytes(bundle(*rows))
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(path))
    live_env()
    answer = runtime.explain("matmul", M=128, N=128, K=128, dtype="float32")
    assert (answer.level, dict(answer.config)) == (level, honest), answer
