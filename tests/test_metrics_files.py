"""The metrics an on-call engineer alerts on, and the Grafana dashboard and Prometheus rules that
ship for them: every metric the two files name is exported by /metrics (so a renamed metric
cannot silently empty a panel or disarm an alert), and the new gauges say what they claim."""
import json
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from db import lifecycle, models
from db.clock import utcnow
from db.session import session_scope
from search_spaces import registry
from tests import rows
from tuner import settings as settings_mod

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t" * 40
AUTH = {"authorization": f"Bearer {TOKEN}"}
METRIC = r"\btuner_[a-z_]+"


@pytest.fixture(scope="module")
def scrape(tmp_path_factory):
    """/metrics of a fleet with a live worker, a crashed one, a job queued for a class with no
    worker for ten minutes and an ended job, after one request to a job's route."""
    home = tmp_path_factory.mktemp("home")
    url = rows.schema(f"sqlite:///{home}/tuner.db")
    rows.live_worker(url, "alive@test", "cpu-interpreter")
    rows.live_worker(url, "crashed@test", "cpu-interpreter")
    key = registry.get("matmul").make_key({"M": 64, "N": 64, "K": 64}, "float16")
    with session_scope(url) as s:
        s.execute(update(models.Worker).where(models.Worker.name == "crashed@test")
                  .values(heartbeat_at=utcnow() - timedelta(seconds=900)))
        for state in ("queued", "done"):
            job, _ = lifecycle.create_job(s, kind="tune", origin="queued", kernel="matmul", kernel_version=key.version,
                                      keys=[key.to_json()], key_hashes=[key.stable_hash], sampler="auto", seed=0,
                                      budget_trials=4, request={}, device_selector="h100", state=state)
            if state == "done":
                s.execute(update(models.Job).where(models.Job.id == job).values(finished_at=utcnow() + timedelta(seconds=45)))
        s.execute(update(models.JobKey).values(enqueued_at=utcnow() - timedelta(seconds=600)))
    from tuner.api.app import create_app

    app = create_app(settings_mod.from_env({"TUNER_HOME": str(home), "TUNER_DB_URL": url, "TUNER_API_TOKEN": TOKEN}))
    client = TestClient(app, base_url="http://localhost", raise_server_exceptions=False)
    assert client.get(f"/v1/jobs/{job}", headers=AUTH).status_code == 200
    from tests.test_api import miss  # a record as the runtime posts it

    assert client.post("/v1/misses", json={"records": [miss()]}, headers=AUTH).status_code == 200
    text = client.get("/metrics", headers=AUTH).text
    return {s.name: [] for f in text_string_to_metric_families(text) for s in f.samples} | {
        "_samples": [s for f in text_string_to_metric_families(text) for s in f.samples]}


def values(scrape, name, **labels):
    return [s.value for s in scrape["_samples"] if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def test_the_on_call_gauges_say_what_they_claim(scrape):
    assert values(scrape, "tuner_workers_dead") == [1]
    (age,) = values(scrape, "tuner_worker_heartbeat_age_seconds", worker="crashed@test")
    assert 890 <= age <= 1200
    assert values(scrape, "tuner_queue_consumers", queue="tune.h100") == [0]
    assert values(scrape, "tuner_queue_consumers", queue="tune.cpu") == [1]
    (oldest,) = values(scrape, "tuner_queue_oldest_seconds", queue="tune.h100")
    assert 590 <= oldest <= 900
    assert values(scrape, "tuner_job_duration_seconds_count", kind="tune") == [1]
    assert values(scrape, "tuner_job_duration_seconds_bucket", kind="tune", le="30.0") == [0]
    assert values(scrape, "tuner_job_duration_seconds_bucket", kind="tune", le="60.0") == [1]
    # gauges with a sample at zero, so an alert tells "none" from "not reported"
    assert values(scrape, "tuner_stale_keys", device_class="cpu-interpreter") == [0]
    assert values(scrape, "tuner_trials_per_minute", device_class="cpu-interpreter") == [0]
    # requests by route template, never by raw path
    assert values(scrape, "tuner_api_requests_total", route="/v1/jobs/{job_id}", method="GET", status="200") == [1]
    assert not [s for s in scrape["_samples"] if s.name.startswith("tuner_api") and len(s.labels.get("route", "")) == 32]


def named_in_alerts() -> set[str]:
    import re

    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    out = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "for", "labels", "annotations"} <= set(rule), rule
            out |= set(re.findall(METRIC, rule["expr"]))
    return out


def named_in_dashboard() -> set[str]:
    import re

    board = json.loads((ROOT / "deploy/grafana/tuner.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert exprs
    return {m for e in exprs for m in re.findall(METRIC, e)}


@pytest.mark.parametrize("named", [named_in_alerts, named_in_dashboard], ids=["alerts", "dashboard"])
def test_every_metric_the_shipped_files_name_is_exported(scrape, named):
    names = named()
    assert names
    missing = sorted(n for n in names if n not in scrape)
    assert not missing, f"named but not exported: {missing}"


def test_the_alerts_cover_what_on_call_needs():
    alerts = named_in_alerts()
    for needed in ("tuner_queue_consumers", "tuner_worker_heartbeat_age_seconds", "tuner_stale_keys",
                   "tuner_database_up", "tuner_broker_up", "tuner_runtime_misses_total"):
        assert needed in alerts, needed


def test_a_scrape_reads_the_database_at_most_once_per_cache_period(tmp_path):
    """At fleet scale a reading takes seconds: scrapes within TUNER_METRICS_CACHE_S get the last
    reading, and an older one is renewed in the background while the scrape gets the last."""
    import time

    from prometheus_client import generate_latest

    from tuner.api.metrics import registry_for

    url = rows.schema(f"sqlite:///{tmp_path}/tuner.db")
    settings = settings_mod.from_env({"TUNER_HOME": str(tmp_path), "TUNER_DB_URL": url, "TUNER_METRICS_CACHE_S": "3600"})
    registry = registry_for(settings)
    (collector,) = registry._collector_to_names  # the one FleetCollector

    def live() -> list[float]:
        text = generate_latest(registry).decode()
        return [s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "tuner_workers_live"]

    assert live() == []
    rows.live_worker(url, "new@test", "cpu-interpreter")
    assert live() == []  # within the period: the last reading
    collector._reading = (time.monotonic() - 7200, collector._reading[1])  # the period has passed
    assert live() == []  # this scrape still gets the last reading, and starts a renewal
    for _ in range(200):
        if live() == [1]:
            break
        time.sleep(0.05)
    assert live() == [1]


def test_a_report_is_computed_once_per_state_of_what_it_reads(tmp_path):
    """The dashboard asks for the same report again and again; at fleet scale each takes hundreds of
    milliseconds. It is held while nothing it reads changes, and computed again when a best is
    written, a trial stored or a job changes state."""
    from tuner.reports.held import held

    url = rows.schema(f"sqlite:///{tmp_path}/tuner.db")
    settings = settings_mod.from_env({"TUNER_HOME": str(tmp_path), "TUNER_DB_URL": url})
    calls = []

    def report(settings, *args):
        calls.append(args)
        return {"n": len(calls)}

    assert held("r", report, settings, "a") == held("r", report, settings, "a") == {"n": 1}
    assert held("r", report, settings, "b") == {"n": 2}  # other arguments: another report
    rows.best(url, "h100-sxm-80gb", {"M": 64, "N": 64, "K": 64}, 0.5)  # a new best: the state moved
    assert held("r", report, settings, "a") == {"n": 3}
    with session_scope(url) as s:
        key = registry.get("matmul").make_key({"M": 64, "N": 64, "K": 64}, "float16")
        lifecycle.create_job(s, kind="tune", origin="queued", kernel="matmul", kernel_version=key.version,
                         keys=[key.to_json()], key_hashes=[key.stable_hash], sampler="auto", seed=0,
                         budget_trials=4, request={}, device_selector="h100")
    assert held("r", report, settings, "a") == {"n": 4}  # a job queued
    assert held("r", report, settings, "a") == {"n": 4}
