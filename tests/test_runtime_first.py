"""A model process's first lookup of a key stored in a local source (the embedded SQLite database,
a bundle file) gets the stored configuration within the default 50 ms deadline, not the default:
the source is read with the standard library (sqlite3, json) while the caller imports the
kernel. Launches served the default while the source was asked count as misses when the answer
is one. The embedded database is read with db.best_rows' SQL, which must answer what
db.store.best_configs answers."""
import json
import subprocess
import sys

import pytest

from tests.cli_helpers import ROOT, tuner_env
from tests.test_runtime import _entry, _key, _live_fp, live_env  # noqa: F401  (the fixture)
from tests.test_runtime_client import bundle
from tests.test_runtime_safety import StuckBundle
from tuner import runtime

STORED = {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 4, "num_warps": 2, "num_stages": 2}

# what a model does first: the README's example (lookup), or a launch through @tuned
FIRST = {
    "lookup": """
cfg = runtime.lookup("matmul", M=64, N=64, K=64, dtype="float32")
""",
    "tuned": """
import torch
from search_spaces import matmul
kernel = runtime.tuned("matmul", key=["M", "N", "K"])(matmul.matmul_kernel)
a = torch.zeros(64, 64)
cfg = kernel.config_for((a, a, a, 64, 64, 64), {})
""",
}
MODEL = """
import json, sys
from tuner import runtime
{first}
answer = runtime.explain("matmul", M=64, N=64, K=64, dtype="float32")
print(json.dumps({{"config": dict(cfg), "level": answer.level, "reason": answer.reason,
                  "sqlalchemy": "sqlalchemy" in sys.modules}}))
"""


def _store_in_embedded_database(home):
    from db.session import upgrade
    from tests.test_misses import _store_best

    url = f"sqlite:///{home / 'tuner.db'}"
    upgrade(url)
    _store_best(url, _key("matmul", M=64, N=64, K=64), STORED, _live_fp())


@pytest.mark.parametrize("source,first", [("database", "lookup"), ("bundle", "tuned")])
def test_the_first_lookup_of_a_fresh_process_gets_the_stored_configuration(tmp_path, source, first):
    home = tmp_path / "home"
    home.mkdir()
    extra = {}
    if source == "database":
        _store_in_embedded_database(home)  # TUNER_DB_URL unset: the embedded default
    else:
        (tmp_path / "b.json").write_bytes(bundle(_entry(_key("matmul", M=64, N=64, K=64), STORED, _live_fp())))
        extra["TUNER_CONFIG_BUNDLE"] = str(tmp_path / "b.json")
    env = tuner_env(home, TUNER_DEVICE="cpu", **extra)  # the default deadline, 50 ms
    done = subprocess.run([sys.executable, "-c", MODEL.format(first=FIRST[first])], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert (out["config"], out["level"]) == (STORED, "exact"), out
    assert not out["sqlalchemy"], "the first lookup imported SQLAlchemy"


def test_launches_served_the_default_while_waiting_count_as_misses(live_env, monkeypatch, tmp_path):  # noqa: F811
    """The source hangs (a bundle that is a named pipe) while three launches are served the default;
    the answer, when it comes, is the default (nothing stored for the key): those three count,
    with the one after it."""
    stuck = StuckBundle(tmp_path / "stuck.json", [_entry(_key("tiles", N=100), {"BLOCK": 128, "num_warps": 4},
                                                         _live_fp())])
    monkeypatch.setenv("TUNER_CONFIG_BUNDLE", str(stuck.path))
    monkeypatch.setenv("TUNER_RUNTIME_DEADLINE_MS", "50")
    monkeypatch.setenv("TUNER_MISS_FLUSH_S", "3600")
    monkeypatch.setenv("TUNER_MISS_FILE", str(tmp_path / "misses.jsonl"))
    live_env()
    try:
        for _ in range(3):
            assert "waiting for bundle" in runtime.explain("matmul", M=64, N=64, K=64, dtype="float32").reason
    finally:
        stuck.release()
    assert runtime.settle(60)
    answer = runtime.explain("matmul", M=64, N=64, K=64, dtype="float32")
    assert answer.level == "default" and "nothing stored" in answer.reason
    assert runtime.flush_misses() == 1
    (record,) = [json.loads(line) for line in (tmp_path / "misses.jsonl").read_text().splitlines()]
    assert (record["kernel"], record["level"], record["count"]) == ("matmul", "default", 4)


def test_the_embedded_database_is_read_as_db_store_reads_it(tmp_path):
    """Current rows only, this key or this dtype, newest first, with their fingerprints and times:
    the light reader and the ORM's best_configs agree row for row."""
    from db import store
    from db.session import session_scope, upgrade
    from tests.test_misses import _store_best
    from tuner.runtime.sources import DatabaseSource, Stored

    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    upgrade(url)
    key, other = _key("matmul", M=64, N=64, K=64), _key("matmul", M=128, N=128, K=128)
    _store_best(url, key, STORED, "a" * 16)
    _store_best(url, key, dict(STORED, BLOCK_K=64), "a" * 16)  # supersedes the first
    _store_best(url, key, dict(STORED, num_warps=4), "b" * 16)  # another fingerprint
    _store_best(url, other, STORED, "a" * 16)
    _store_best(url, _key("matmul", "float16", M=64, N=64, K=64), STORED, "a" * 16)  # another dtype
    light = DatabaseSource(url)
    slug = "cpu-interpreter"
    with session_scope(url) as s:
        def orm(**narrow):
            return [Stored(b.key["dims"], fp.hash, b.config, b.created_at.isoformat())
                    for b, _, fp in store.best_configs(s, kernel="matmul", kernel_version=key.version,
                                                       device_classes=[slug], **narrow)]
        assert light.exact("matmul", key.version, key.stable_hash, slug) == orm(key_hash=key.stable_hash)
        assert light.shapes("matmul", key.version, "float32", slug).rows == orm(dtype="float32")
    assert len(light.exact("matmul", key.version, key.stable_hash, slug)) == 2
    assert len(light.shapes("matmul", key.version, "float32", slug).rows) == 3
