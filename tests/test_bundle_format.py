"""tuner/formats/bundle.py in this process (fast): the entry of a best row, the document and its
digest, the atomic write, and the reader's indexes and refusals. Written against the survivors of
bench/mutation.py (the CLI tests that export a bundle run it in a child process, where no mutant
is seen)."""
import json
import os
import stat
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from tuner.formats import Written, bundle


def _e(kernel="tiles", key_hash="h1", device_class="cpu-interpreter", fingerprint="f1", n=8, dtype="float32",
       block=16, tuned_at="2026-01-01T00:00:00+00:00"):
    return {"kernel": kernel, "kernel_version": "v1", "key_hash": key_hash,
            "key": {"kernel": kernel, "version": "v1", "dims": {"N": n}, "dtype": dtype}, "dtype": dtype,
            "device_class": device_class, "fingerprint": fingerprint, "config": {"BLOCK": block},
            "tuned_at": tuned_at}


def test_the_entry_of_a_best_row():
    best = SimpleNamespace(kernel="tiles", kernel_version="v1", key_hash="h1", key={"dims": {"N": 8}},
                           dtype="float32", config={"BLOCK": 16}, median_ms=1.5, speedup=2.0,
                           created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    fp = SimpleNamespace(hash="f" * 16, fields={"driver": "555.1", "runtime": "cuda-12.8", "triton": "3.6.0",
                                                 "torch": "2.13.0"})
    assert bundle.entry(best, "h100-sxm-80gb", fp, ("NVIDIA H100 80GB HBM3",)) == {
        "kernel": "tiles", "kernel_version": "v1", "key_hash": "h1", "key": {"dims": {"N": 8}}, "dtype": "float32",
        "device_class": "h100-sxm-80gb", "fingerprint": "f" * 16, "stack": fp.fields, "config": {"BLOCK": 16},
        "median_ms": 1.5, "speedup": 2.0, "tuned_at": "2026-01-02T03:04:05+00:00",
        "device_names": ["NVIDIA H100 80GB HBM3"]}
    assert bundle.entry(best, "cpu-interpreter", fp)["device_names"] == []


def test_the_document_is_in_a_stable_order_and_its_digest_ignores_when_it_was_made():
    entries = [_e("tiles", "h2"), _e("matmul", "h9"), _e("tiles", "h1", fingerprint="f2"),
               _e("tiles", "h1", device_class="a100-sxm-80gb"), _e("tiles", "h1", fingerprint="f1")]
    doc = bundle.document(entries)
    assert [(e["kernel"], e["key_hash"], e["device_class"], e["fingerprint"]) for e in doc["entries"]] == [
        ("matmul", "h9", "cpu-interpreter", "f1"), ("tiles", "h1", "a100-sxm-80gb", "f1"),
        ("tiles", "h1", "cpu-interpreter", "f1"), ("tiles", "h1", "cpu-interpreter", "f2"),
        ("tiles", "h2", "cpu-interpreter", "f1")]
    assert (doc["format"], doc["version"]) == ("tuner-bundle", 1) and set(doc) == {"format", "version", "created_at",
                                                                                  "entries"}
    made = datetime.fromisoformat(doc["created_at"])
    assert made.tzinfo is not None and abs(datetime.now(timezone.utc) - made) < timedelta(minutes=5)
    digest = bundle.digest(doc)
    assert len(digest) == 32 and int(digest, 16) >= 0
    assert bundle.digest({**doc, "created_at": "another time"}) == digest
    assert bundle.digest(bundle.document(list(reversed(entries)))) == digest  # the same contents
    reordered = {**doc, "entries": [{k: e[k] for k in reversed(list(e))} for e in doc["entries"]]}
    assert bundle.digest(reordered) == digest  # the keys of an entry in any order
    assert bundle.digest(bundle.document(entries[:-1])) != digest


def test_a_bundle_is_written_whole_and_readable_by_everyone(tmp_path):
    out = tmp_path / "b.json"
    assert bundle.write([_e("tiles", "h2"), _e("tiles", "h1")], out) == Written(2)
    doc = json.loads(out.read_text())
    assert [e["key_hash"] for e in doc["entries"]] == ["h1", "h2"] and doc["format"] == "tuner-bundle"
    assert out.read_text() == json.dumps(doc, indent=1, sort_keys=True)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644
    bundle.write_atomic(tmp_path / "private.json", "{}", mode=0o600)
    assert stat.S_IMODE(os.stat(tmp_path / "private.json").st_mode) == 0o600
    with pytest.raises(TypeError):
        bundle.write_atomic(out, 123)  # fails while writing: the old file stays, no temporary is left
    assert json.loads(out.read_text()) == doc and sorted(p.name for p in tmp_path.iterdir()) == ["b.json",
                                                                                               "private.json"]


def test_the_reader_indexes_entries_by_key_and_by_shape(tmp_path):
    e1, e2 = _e("tiles", "h1", n=8, block=16), _e("tiles", "h1", fingerprint="f2", n=8, block=32)
    e3, e4 = _e("tiles", "h3", n=64, block=64, tuned_at=None), _e("tiles", "h4", dtype="float16", n=128)
    del e3["tuned_at"]  # an older bundle's entry
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"format": "tuner-bundle", "version": 1, "created_at": "then",
                                "entries": [e1, e2, e3, e4]}))
    b = bundle.read(path)
    assert b.created_at == "then"
    assert b.exact("tiles", "v1", "h1", "cpu-interpreter") == [("f1", {"BLOCK": 16}, e1), ("f2", {"BLOCK": 32}, e2)]
    assert b.exact("tiles", "v1", "h1", "a100-sxm-80gb") == [] and b.exact("tiles", "v2", "h1", "cpu-interpreter") == []
    assert b.shapes("tiles", "v1", "float32", "cpu-interpreter") == [
        ({"N": 8}, "f1", {"BLOCK": 16}, "2026-01-01T00:00:00+00:00"),
        ({"N": 8}, "f2", {"BLOCK": 32}, "2026-01-01T00:00:00+00:00"), ({"N": 64}, "f1", {"BLOCK": 64}, None)]
    assert b.shapes("tiles", "v1", "float16", "cpu-interpreter") == [({"N": 128}, "f1", {"BLOCK": 16},
                                                                      "2026-01-01T00:00:00+00:00")]
    assert b.shapes("tiles", "v1", "float32", "a100-sxm-80gb") == []


@pytest.mark.parametrize("doc", [[], {"format": "vllm", "entries": []}, {"entries": []},
                                 {"format": "tuner-bundle", "entries": {}}, {"format": "tuner-bundle"}])
def test_what_is_not_a_bundle_is_refused_naming_the_file(tmp_path, doc):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError) as err:
        bundle.read(path)
    assert str(err.value) == f"{path} is not a tuner bundle (format tuner-bundle)"
    with pytest.raises(ValueError) as err:
        bundle.Bundle(doc)
    assert str(err.value) == "bundle is not a tuner bundle (format tuner-bundle)"


def test_the_temporary_file_is_made_beside_the_bundle(tmp_path, monkeypatch):
    """In the bundle's own folder, never the system's temporary one (a rename across file systems
    fails, and is not atomic): with no usable system folder the write still succeeds."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    bundle.write_atomic(tmp_path / "b.json", "{}")
    assert (tmp_path / "b.json").read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]


def test_the_file_in_writing_is_hidden_and_named_after_the_bundle(tmp_path, monkeypatch):
    """Until the rename, the folder shows no new file to a listing or a glob (the temporary one is a
    dot file), and one that a killed writer left behind says which file it was to become."""
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.extend(sorted(p.name for p in tmp_path.iterdir()))
        real_replace(src, dst)

    monkeypatch.setattr(bundle.os, "replace", replace)
    bundle.write_atomic(tmp_path / "b.json", "{}")
    assert len(seen) == 1 and seen[0].startswith(".b.json.") and len(seen[0]) > len(".b.json.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]


def _r(kernel="tiles", key_hash="h1", device_class="cpu-interpreter", fingerprint="f1", block=32):
    return {"kernel": kernel, "kernel_version": "v1", "key_hash": key_hash, "key": {"dims": {"N": 8}},
            "dtype": "float32", "device_class": device_class, "fingerprint": fingerprint, "config": {"BLOCK": block},
            "median_ms": 0.5, "reported_at": "2026-01-01T00:00:00+00:00"}


def test_reported_winners_ride_beside_the_bests_in_a_stable_order_and_in_the_digest():
    row = SimpleNamespace(kernel="tiles", kernel_version="v1", key_hash="h1", key={"dims": {"N": 8}}, dtype="float32",
                          device_class="h100-sxm-80gb", fingerprint="f" * 16, config={"BLOCK": 16}, median_ms=0.5,
                          reported_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    assert bundle.reported_entry(row) == {
        "kernel": "tiles", "kernel_version": "v1", "key_hash": "h1", "key": {"dims": {"N": 8}}, "dtype": "float32",
        "device_class": "h100-sxm-80gb", "fingerprint": "f" * 16, "config": {"BLOCK": 16}, "median_ms": 0.5,
        "reported_at": "2026-01-02T03:04:05+00:00"}
    entries = [_e("tiles", "h1")]
    reported = [_r("tiles", "h2"), _r("matmul", "h9"), _r("tiles", "h1", fingerprint="f2"), _r("tiles", "h1")]
    doc = bundle.document(entries, reported)
    assert doc["reported"] == [reported[1], reported[3], reported[2], reported[0]]
    assert "reported" not in bundle.document(entries, []) and "reported" not in bundle.document(entries)
    # a bundle without reported winners keeps the digest it had before there were any
    assert bundle.digest(bundle.document(entries, [])) == bundle.digest(bundle.document(entries))
    assert bundle.digest(doc) != bundle.digest(bundle.document(entries))
    assert bundle.digest(bundle.document(entries, list(reversed(reported)))) == bundle.digest(doc)
    assert bundle.digest(bundle.document(entries, reported[:-1])) != bundle.digest(doc)
    assert bundle.digest(bundle.document([], reported)) != bundle.digest(doc)  # the bests count too


def test_the_reader_indexes_reported_winners_by_key_and_class():
    b = bundle.Bundle(bundle.document([_e()], [_r(block=32), _r(fingerprint="f2", block=64), _r(key_hash="h2")]))
    assert b.reported("tiles", "v1", "h1", "cpu-interpreter") == [
        ("f1", {"BLOCK": 32}, _r(block=32)), ("f2", {"BLOCK": 64}, _r(fingerprint="f2", block=64))]
    assert [c for _, c, _ in b.reported("tiles", "v1", "h2", "cpu-interpreter")] == [{"BLOCK": 32}]
    assert b.reported("tiles", "v2", "h1", "cpu-interpreter") == [] and b.reported("tiles", "v1", "h1", "a100") == []
    assert b.reported("matmul", "v1", "h1", "cpu-interpreter") == []
    assert bundle.Bundle(bundle.document([_e()])).reported("tiles", "v1", "h1", "cpu-interpreter") == []
