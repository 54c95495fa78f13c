"""Runtime misses over HTTP (what tuner.runtime's HttpSink posts to POST /v1/misses): posted,
listed and counted; bad batches refused in one line with nothing written; list limits; the
metrics that name only registered kernels and known classes; the runtime token required."""
import pytest

from tests import rows
from tests.test_api import AUTH, MISS_DIMS, REMOTE, make_client, miss
from db.clock import utcnow
from tuner.runtime.miss_tally import POST_BATCH


def test_runtime_misses_are_posted_listed_and_counted(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    api = make_client(tmp_path / "home", client=REMOTE, db_url=url)
    r = api.post("/v1/misses", json={"records": [miss(), miss(level="default", count=2)]}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"records": 2, "rows": 2}, r.text
    assert api.post("/v1/misses", json={"records": [miss()]}, headers=AUTH).json() == {"records": 1, "rows": 1}
    listed = api.get("/v1/runtime-misses", headers=AUTH).json()
    assert [(m["key"], m["level"], m["count"], m["device_class"]) for m in listed] == [
        (MISS_DIMS, "nearest", 6, "h100-sxm-80gb"), (MISS_DIMS, "default", 2, "h100-sxm-80gb")]
    assert listed[0]["first_seen"].startswith("2026-01-01") and listed[0]["last_seen"].startswith("2026-01-02")
    assert len(api.get("/v1/runtime-misses", params={"device_class": "h100"}, headers=AUTH).json()) == 2
    assert api.get("/v1/runtime-misses", params={"device_class": "mi300x"}, headers=AUTH).json() == []
    assert api.get("/v1/runtime-misses", params={"kernel": "softmax"}, headers=AUTH).json() == []

    def samples():
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in
                text_string_to_metric_families(api.get("/metrics", headers=AUTH).text) for s in family.samples}

    labels = (("device_class", "h100-sxm-80gb"), ("kernel", "matmul"))
    before = samples()
    assert before[("tuner_runtime_misses_total", labels + (("level", "nearest"),))] == 6
    assert before[("tuner_runtime_misses_total", labels + (("level", "default"),))] == 2
    assert before[("tuner_runtime_missed_keys", (("device_class", "h100-sxm-80gb"),))] == 2
    rows.best(url, "h100-sxm-80gb", MISS_DIMS, 0.03)  # the key is tuned on that stack: no longer a miss
    assert api.get("/v1/runtime-misses", headers=AUTH).json() == []
    after = samples()
    assert after[("tuner_runtime_misses_total", labels + (("level", "nearest"),))] == 6  # a counter never drops
    assert ("tuner_runtime_missed_keys", (("device_class", "h100-sxm-80gb"),)) not in after


# what a runtime (or anyone) might post wrong: (body, status, what the one line says)
BAD_MISSES = {
    "no records": ({"records": []}, 422, "records: List should have at least 1 item"),
    "not a list": ({"records": "x"}, 422, "records: Input should be a valid list"),
    "unknown field": ({"records": [miss()], "extra": 1}, 422, "extra: Extra inputs are not permitted"),
    "too many": ({"records": [miss()] * (POST_BATCH + 1)}, 422, f"records: List should have at most {POST_BATCH} items"),
    "not a record": ({"records": [{}]}, 400, "records[0] is not a miss record (missing kernel, kernel_version"),
    "second bad": ({"records": [miss(), miss(count=0)]}, 400, "records[1] is not a miss record (count must be"),
    "key mismatch": ({"records": [miss(dtype="float32")]}, 400, "must match the key"),
    "bad level": ({"records": [miss(level="exact")]}, 400, "level must be one of other_fingerprint"),
    "bad time": ({"records": [miss(last_seen="yesterday")]}, 400, "last_seen must be an ISO-8601 time"),
    # only what a registered kernel at its version, a known class and a stack could have served
    # (issue 31, item 5): anything else made rows and /metrics series nobody can tune
    "unknown kernel": ({"records": [miss(kernel="k" * 5000, key={**miss()["key"], "kernel": "k" * 5000})]}, 400,
                       "records[0] is not a miss record (unknown kernel 'kkkk"),
    "old kernel version": ({"records": [miss(kernel_version="0" * 16, key={**miss()["key"], "version": "0" * 16})]},
                           400, "is not matmul's current version"),
    "a key make_key refuses": ({"records": [miss(key={**miss()["key"], "dims": {"M": 0, "N": 1, "K": 1}})]}, 400,
                               "shape dim M=0 must be a positive integer"),
    "a dim past int64": ({"records": [miss(key={**miss()["key"], "dims": {**MISS_DIMS, "M": 2**63}})]}, 400,
                         "each an integer below 2**63"),
    "unknown class": ({"records": [miss(device_class="tpu-v5")]}, 400, "device_class 'tpu-v5' is not a device-class slug"),
    "a family for a class": ({"records": [miss(device_class="h100")]}, 400, "is not a device-class slug"),
    "bad fingerprint": ({"records": [miss(fingerprint="x" * 80)]}, 400, "fingerprint must be a stack hash"),
    "count past the bound": ({"records": [miss(count=2**63 - 1)]}, 400, "count must be an integer from 1 to 1000000000"),
    # a drop-in's reported winner is served to every process of the class: checked as a stored row
    "a winner outside the space": ({"records": [miss(), miss(reported={"config": {"BLOCK_M": 1}, "median_ms": 1.0})]},
                                   400, "records[1] is not a miss record (the reported configuration is refused"),
    "a winner of another form": ({"records": [miss(reported=[1])]}, 400, "reported must be {config"),
}


@pytest.mark.parametrize("case", sorted(BAD_MISSES))
def test_bad_misses_get_one_json_line_and_write_nothing(case, tmp_path):
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    api = make_client(tmp_path / "home", db_url=url)
    body, status, says = BAD_MISSES[case]
    r = api.post("/v1/misses", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert says in error and "\n" not in error and "Traceback" not in error, error
    assert api.get("/v1/runtime-misses").json() == []


def test_list_endpoints_take_a_limit(tmp_path):
    """GET /v1/runtime-misses answered every row the table held; every list takes `limit` now
    (default 100, at most 1000)."""
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    api = make_client(tmp_path / "home", db_url=url)
    levels = ("nearest", "default", "other_fingerprint")
    r = api.post("/v1/misses", json={"records": [miss(level=lv, count=n + 1) for n, lv in enumerate(levels)]},
                 headers=AUTH)
    assert r.status_code == 200, r.text
    assert [m["level"] for m in api.get("/v1/runtime-misses", params={"limit": 2}).json()] == [
        "other_fingerprint", "default"]  # the most frequent first
    assert len(api.get("/v1/runtime-misses").json()) == 3
    for path in ("/v1/runtime-misses", "/v1/jobs", "/v1/workers", "/v1/device-classes", "/v1/best"):
        r = api.get(path, params={"limit": 1001})
        assert r.status_code == 422 and "limit" in r.json()["error"], (path, r.text)
        assert api.get(path, params={"limit": 1}).status_code == 200, path


def test_metrics_name_registered_kernels_and_known_classes_only(tmp_path):
    """10 posted requests made 5,003 series: what the runtime posts names the labels. Rows of an
    unregistered kernel or an unknown class (written before the checks, or straight to the
    database) are left out of /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    from db import store
    from db.session import session_scope

    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    good = {**miss(), "key_hash": "1" * 16, "first_seen": utcnow(), "last_seen": utcnow()}
    with session_scope(url) as s:
        store.record_misses(s, [good, {**good, "key_hash": "2" * 16, "kernel": "garbage-kernel"},
                                {**good, "key_hash": "3" * 16, "device_class": "nvidia-zz-1sm-1gb"}])
    api = make_client(tmp_path / "home", db_url=url)
    labels = {tuple(sorted(sample.labels.items())) for family in text_string_to_metric_families(api.get("/metrics").text)
              if family.name.startswith("tuner_runtime_miss") for sample in family.samples}
    assert labels == {(("device_class", "h100-sxm-80gb"), ("kernel", "matmul"), ("level", "nearest")),
                      (("device_class", "h100-sxm-80gb"),)}, labels


def test_posting_misses_needs_the_token(tmp_path):
    url = rows.schema(f"sqlite:///{tmp_path}/t.db")
    api = make_client(tmp_path / "home", db_url=url, auth=False)
    for headers in ({}, {"authorization": "Bearer wrong"}):
        r = api.post("/v1/misses", json={"records": [miss()]}, headers=headers)
        assert r.status_code == 401 and r.json()["error"], r.text
    r = api.post("/v1/misses", content=b"{not json", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]
    assert api.get("/v1/runtime-misses", headers=AUTH).json() == []
