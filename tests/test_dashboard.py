"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright, against
`tuner serve`, a real `tuner worker` on the CPU, Redis and PostgreSQL.

The browser logs in with the token, a job is submitted through the jobs page's form, the job
page is watched until the worker has finished it, and every page is checked against the database: the fleet, the job's progress, the
key's plot of every trial and its best, the retune report after a simulated driver update, the
shape sweep, the class comparison, and /docs (its Swagger UI from the server's own files, with
every other origin cut off); no page breaks the Content-Security-Policy. A screenshot of each page is written to tmp_path, and to
the directory in TUNER_SCREENSHOTS when it is set (docs/dashboard/ holds the committed ones:
`TUNER_SCREENSHOTS=docs/dashboard pytest tests/test_dashboard.py` regenerates them).

A second test follows the service's output as a user does: from the form to the finished job
page (the stored best), to /bests, to the key page, to a download of the selection's bundle.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests import rows
from tests.cli_helpers import ROOT
from tests.services import WorkerProc, pg_database, redis_url, run_cli, service_env, wait_for
from tuner.display import config_word, duration

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get install -y --no-install-recommends chromium; pip install 'playwright>=1.44'"
TOKEN = "dashboard-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason=f"no playwright; CI needs: {INSTALL}")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}; CI needs: {INSTALL}")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)  # a fresh profile of its own each launch
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    home = tmp_path_factory.mktemp("dashboard")
    with pg_database() as db_url:
        env = service_env(home, db_url, redis_url(), TUNER_API_TOKEN=TOKEN)
        assert run_cli(env, "db", "upgrade").returncode == 0
        port, metrics_port = free_port(), free_port()
        log = open(home / "serve.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "tuner.cli", "serve", "--port", str(port)], env=env,
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"

        def up():
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        workers = []
        engine = create_engine(db_url)
        try:
            wait_for(up, 120, "tuner serve")
            workers.append(WorkerProc("w1", dict(env, TUNER_METRICS_PORT=str(metrics_port)), home))
            yield {"env": env, "base": base, "engine": engine, "home": home, "workers": workers, "db_url": db_url,
                   "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
        finally:
            for w in workers:
                w.stop()
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
            log.close()
            engine.dispose()
    assert "Traceback" not in (home / "serve.log").read_text()


def shot(page, name: str, tmp_path: Path) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    if os.environ.get("TUNER_SCREENSHOTS"):
        target = Path(os.environ["TUNER_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / f"{name}.png", target / f"{name}.png")


def sql(world, query: str, **params):
    with world["engine"].connect() as c:
        return c.execute(text(query), params).all()


def registered(world, name: str) -> bool:
    return bool(sql(world, "select 1 from workers where name = :n and heartbeat_at > now() - interval '5 seconds'",
                    n=name))


def wait_job(world, job: str, timeout: float = 300) -> dict:
    def done():
        st = httpx.get(f"{world['base']}/v1/jobs/{job}", headers=AUTH).json()
        return st["state"] in ("done", "failed", "cancelled")
    wait_for(done, timeout, f"job {job}", poll_s=1)
    return httpx.get(f"{world['base']}/v1/jobs/{job}", headers=AUTH).json()


def test_the_dashboard_shows_a_job_submitted_through_its_page(world, browser, tmp_path):
    base = world["base"]
    wait_for(lambda: registered(world, "w1@test"), 180, "the worker to register")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    blocked = []  # what the Content-Security-Policy refused, as Chromium reports it
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)

    # no page without a login; a wrong token is refused on the login page, nothing set
    page.goto(f"{base}/jobs")
    assert "needs the token" in page.inner_text("main")
    page.click("main a[href='/login']")
    page.fill("input[name=token]", "wrong")
    page.click("#login button")
    assert "wrong token" in page.inner_text("#login-error") and not page.context.cookies()
    page.fill("input[name=token]", TOKEN)
    page.click("#login button")
    page.wait_for_url(f"{base}/")
    (cookie,) = page.context.cookies()
    assert cookie["value"] != TOKEN and cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # submit through the jobs page's form
    page.goto(f"{base}/jobs")
    page.fill("textarea[name=shapes]", "M=32,N=32,K=32")
    page.fill("input[name=trials]", "6")
    page.click("#submit button")
    page.wait_for_url(re.compile(r".*/jobs/[0-9a-f]{32}$"))
    job = page.url.rsplit("/", 1)[1]
    seen = [page.inner_text("#state")]

    # watch the job page (its keys refresh by themselves; loaded again here) until the worker has finished the job
    end = time.monotonic() + 300
    while seen[-1] != "done":
        assert seen[-1] in ("queued", "running") and time.monotonic() < end, seen
        time.sleep(2)
        page.goto(f"{base}/jobs/{job}")
        seen.append(page.inner_text("#state"))
    (n_trials, budget), = [map(int, page.inner_text(".key .trials").split("/"))]
    assert budget == 6 and 6 <= n_trials <= 8
    # a finished key shows what its final re-measurement stored (the first job of a fresh database
    # writes the key's best), not the search's best so far
    (best_ms, default_ms), = sql(world, "select median_ms, default_ms from best_configs where job_id = :j", j=job)
    assert page.inner_text(".key .best-ms") == duration(best_ms)
    assert page.inner_text(".key .default-ms") == duration(default_ms)
    assert "Triton-interpreter timings" in page.inner_text("main")
    shot(page, "job", tmp_path)

    # the key's page: one point per measured trial, and the stored best
    page.click(".key a")
    key_hash = page.url.rsplit("/", 1)[1]
    measured = sql(world, "select count(*) from tuning_trials where key_hash = :h and status != 'invalid'",
                   h=key_hash)[0][0]
    assert page.locator("#trials-plot g[id^=trials-] use").count() == measured
    # the plot's colours survive the CSP (matplotlib's style attributes would be dropped: all black)
    fills = page.locator("#trials-plot g[id^=trials-] use").evaluate_all("els => els.map(e => getComputedStyle(e).fill)")
    assert "rgb(0, 0, 0)" not in fills, fills
    (best_config,) = sql(world, "select config from best_configs where key_hash = :h and superseded_at is null",
                         h=key_hash)[0]
    best_config = best_config if isinstance(best_config, dict) else json.loads(best_config)
    assert page.inner_text("#current .config") == config_word(best_config)
    assert page.locator("#history tr").count() == 2  # the header and the one best
    shot(page, "key", tmp_path)

    # the fleet: the worker alive in its class; the jobs list
    page.goto(f"{base}/")
    assert "w1@test" in page.inner_text("#workers") and "live" in page.inner_text("#workers .worker-state")
    assert page.inner_text("#classes .live-workers") == "1"
    shot(page, "fleet", tmp_path)
    page.goto(f"{base}/jobs")
    assert page.locator(f"tr[data-job='{job}'] .state").inner_text() == "done"
    shot(page, "jobs", tmp_path)

    # the worker's own metrics count what the database holds of its trials
    from prometheus_client.parser import text_string_to_metric_families

    counted = {s.labels["status"]: s.value for f in text_string_to_metric_families(httpx.get(world["metrics"]).text)
               for s in f.samples if s.name == "tuner_worker_trials_total"}
    stored = dict(sql(world, "select t.status, count(*) from tuning_trials t join workers w on w.id = t.worker_id "
                             "where w.name = 'w1@test' and t.status != 'invalid' group by t.status"))
    assert counted == stored

    # a driver update: the old stack's worker goes, a new one comes, the retune runs and is reported
    world["workers"][0].stop()
    new = WorkerProc("w2", dict(world["env"], TUNER_FINGERPRINT_OVERRIDE="driver=999.1"), world["home"])
    world["workers"].append(new)
    wait_for(lambda: registered(world, "w2@test"), 180, "the new stack's worker")
    retune = run_cli(world["env"], "retune", "--stale-only", "--json")
    assert retune.returncode == 0, retune.stderr
    (rjob,) = [j["job"] for j in json.loads(retune.stdout)["jobs"]]
    assert wait_job(world, rjob)["state"] == "done"
    report = httpx.get(f"{base}/v1/retune", headers=AUTH).json()
    page.goto(f"{base}/retune")
    table = page.inner_text("#retune")
    (row,) = report["keys"]
    assert row["old_fingerprint"] in table and row["new_fingerprint"] in table
    assert ("none" if not row["flags"] else row["flags"][0]) in table
    shot(page, "retune", tmp_path)

    # a shape sweep on the interpreter
    sweep = run_cli(world["env"], "sweep-shapes", "matmul", "--vary", "N=32:96:32", "--shape", "M=32,K=32",
                    "--device-class", "cpu", "--trials", "3", "--json")
    assert sweep.returncode == 0, sweep.stderr
    for j in json.loads(sweep.stdout)["jobs"]:
        assert wait_job(world, j)["state"] == "done"
    page.goto(f"{base}/shapes?kernel=matmul&vary=N&shape=M%3D32%2CK%3D32&device_class=cpu&dtype=float32")
    values = [r.split("\t")[0] for r in page.inner_text("#points").splitlines()[1:]]
    assert values == ["32", "64", "96"]
    assert page.locator("#points tr:has-text('yes')").count() == 2  # 32 and 64
    shot(page, "shapes", tmp_path)

    # two classes compared: rows written straight to the database (no H100 or MI300X here)
    for slug, ms in (("h100-sxm-80gb", [0.030, 0.040, 0.200]), ("mi300x-192gb", [0.025, 0.050, 0.160])):
        for m, t in zip((16, 128, 4096), ms):
            rows.best(world["db_url"], slug, {"M": m, "N": 4096, "K": 4096}, t, dtype="bfloat16")
    page.goto(f"{base}/compare?a=h100&b=mi300x&kernel=matmul")
    expected = httpx.get(f"{base}/v1/compare", params={"device_class": ["h100", "mi300x"], "kernel": "matmul"},
                         headers=AUTH).json()
    assert page.inner_text("#per-kernel .geomean") == f"{expected['per_kernel']['matmul']['geomean_ratio']:.3f}"
    assert page.locator("#compare tr").count() == 4
    first = page.locator("#compare tr").nth(1).inner_text()  # M=16: a skinny GEMM, judged by its GB/s
    assert f"{expected['keys'][0]['a']['gbps']:.0f}" in first and f"{expected['keys'][0]['b']['gbps']:.0f}" in first
    shot(page, "compare", tmp_path)

    # /docs: Swagger UI from the server's own files, with every other origin cut off
    outside = []
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(base)
               else (outside.append(route.request.url), route.abort()))
    page.goto(f"{base}/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "tuner" in page.inner_text(".swagger-ui .info .title")
    assert page.locator(".opblock-summary-path[data-path='/v1/jobs']").count() >= 1
    assert outside == []
    shot(page, "docs", tmp_path)
    assert blocked == []

    # logging out ends the session: the pages need a login again
    page.goto(f"{base}/")
    page.click("#logout button")
    page.wait_for_url(f"{base}/login")
    page.goto(f"{base}/")
    assert "needs the token" in page.inner_text("main")


def test_from_the_form_to_the_stored_best_its_key_and_a_download(world, browser, tmp_path):
    base = world["base"]
    wait_for(lambda: sql(world, "select 1 from workers where stopped_at is null and device like 'cpu%' "
                                "and heartbeat_at > now() - interval '5 seconds'"), 180, "a CPU worker")
    page = login(browser, world["base"])
    blocked = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    shape = "M=16,N=16,K=16"

    # the form: submitted, followed until the worker is done
    page.goto(f"{base}/jobs")
    page.fill("textarea[name=shapes]", shape)
    page.fill("input[name=trials]", "4")
    page.click("#submit button")
    page.wait_for_url(re.compile(r".*/jobs/[0-9a-f]{32}$"))
    job = page.url.rsplit("/", 1)[1]
    end = time.monotonic() + 240
    while page.inner_text("#state") != "done":
        assert page.inner_text("#state") in ("queued", "running") and time.monotonic() < end
        time.sleep(1)
        page.goto(f"{base}/jobs/{job}")

    # the finished job page shows what the final re-measurement stored, not the search's best so far
    (key_hash, config, best_ms), = sql(world, "select key_hash, config, median_ms from best_configs "
                                              "where job_id = :j", j=job)
    config = config if isinstance(config, dict) else json.loads(config)
    assert page.inner_text(".key .best-ms") == duration(best_ms)
    assert page.inner_text(".key .result").startswith(config_word(config))
    shot(page, "flow-job", tmp_path)

    # /bests, from the nav, filtered to the key: its row names the stored best and links to its page
    page.click("header a[href='/bests']")
    page.fill("#filter input[name=kernel]", "matmul")
    page.fill("#filter input[name=shape]", shape)
    page.click("#filter button")
    page.wait_for_url(re.compile(r".*/bests\?.*shape=M%3D16"))
    (row,) = page.locator("#bests tr.best").all()
    assert row.locator(".config").inner_text() == config_word(config)
    assert row.locator(".time").inner_text() == duration(best_ms)
    assert page.locator("#downloads a.download").all_inner_texts() == ["bundle.json"]  # matmul: no vLLM file
    shot(page, "bests", tmp_path)

    # the key page: every measured point named on hover (its <title>), and the stored best
    row.locator("a").click()
    page.wait_for_url(f"{base}/keys/matmul/{key_hash}")
    measured = sql(world, "select config, median_ms from tuning_trials where key_hash = :h and status = 'ok'",
                   h=key_hash)
    titles = page.locator("#trials-plot g[id^=trials-ok] use title").all_text_contents()
    assert sorted(t.split(": ", 1)[1] for t in titles) == sorted(
        f"{config_word(c if isinstance(c, dict) else json.loads(c))}, {duration(ms)}" for c, ms in measured)
    assert page.inner_text("#current .config") == config_word(config)
    page.locator("#trials-plot g[id^=trials-ok] use").first.hover()
    shot(page, "key-plot", tmp_path)

    # back to the selection, and its bundle downloaded: the file parses and holds the stored best
    page.go_back()
    with page.expect_download() as download:
        page.click("#downloads a[data-format=bundle]")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    doc = json.loads(saved.read_text())
    (entry,) = [e for e in doc["entries"] if e["key_hash"] == key_hash]
    assert doc["format"] == "tuner-bundle" and entry["config"] == config and entry["median_ms"] == best_ms
    assert {e["key"]["dims"]["M"] for e in doc["entries"]} == {16}  # the selection, not every best
    assert blocked == []


def sql_write(world, query: str, **params) -> None:
    with world["engine"].begin() as c:
        c.execute(text(query), params)


def running_key(world) -> tuple[str, str]:
    """A running job of one matmul key on an H100 class, with one trial: (job id, key hash)."""
    from db import lifecycle
    from db.session import session_scope
    from search_spaces import registry

    key = registry.get("matmul").make_key({"M": 48, "N": 48, "K": 48}, "float16")
    with session_scope(world["db_url"]) as s:
        job, _ = lifecycle.create_job(s, kind="tune", origin="queued", kernel="matmul", kernel_version=key.version,
                                  keys=[key.to_json()], key_hashes=[key.stable_hash], sampler="auto", seed=None,
                                  budget_trials=8, request={}, device_selector="h100-sxm-80gb", state="running")
    trial(world, job, key.stable_hash, 0.5)
    return job, key.stable_hash


def trial(world, job: str, key_hash: str, ms: float) -> None:
    from db import models
    from db.session import session_scope

    with session_scope(world["db_url"]) as s:
        dc, fp = rows.identity(s, "h100-sxm-80gb")
        key_id = s.scalar(text("select id from job_keys where job_id = :j"), {"j": job})
        s.add(models.TuningTrial(job_id=job, job_key_id=key_id, kernel="matmul", key_hash=key_hash,
                                 device_class_id=dc, fingerprint_id=fp, config={"BLOCK_M": 16, "ms": ms},
                                 config_hash=f"{int(ms * 1000):016d}", status="ok", median_ms=ms))


def login(browser, base: str):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{base}/login")
    page.fill("input[name=token]", TOKEN)
    page.click("#login button")
    page.wait_for_url(f"{base}/")
    return page


def test_the_jobs_page_keeps_what_is_typed_while_its_list_refreshes(world, browser):
    """The jobs page reloaded whole every 3 s while any job was unfinished, wiping the form being
    filled; a job queued for a class with no live worker never finishes, so the form was unusable.
    Now only the list is fetched again (static/refresh.js) and swapped in."""
    from tuner.api.pages import REFRESH_S

    base = world["base"]
    queued = httpx.post(f"{base}/v1/jobs", json={"kernel": "trivial", "shapes": ["N=16"], "device_class": "h100"},
                        headers=AUTH).json()["job"]
    page = login(browser, base)
    blocked = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{base}/jobs")
    page.evaluate("window.notReloaded = true")  # gone if the page loads again
    page.fill("input[name=kernel]", "softmax")
    page.fill("textarea[name=shapes]", "M=64,N=512\nM=128,N=512")
    page.fill("input[name=trials]", "7")
    page.focus("textarea[name=shapes]")
    before, typed_at = page.inner_html("#jobs"), time.monotonic()
    # a job submitted elsewhere meanwhile: the list must show it without a reload
    later = httpx.post(f"{base}/v1/jobs", json={"kernel": "trivial", "shapes": ["N=32"], "device_class": "h100"},
                       headers=AUTH).json()["job"]
    page.wait_for_selector(f"#jobs tr[data-job='{later}']", timeout=(2 * REFRESH_S + 5) * 1000)
    time.sleep(max(0.0, typed_at + 2 * REFRESH_S + 1 - time.monotonic()))  # past two refresh periods
    assert page.input_value("input[name=kernel]") == "softmax"
    assert page.input_value("textarea[name=shapes]") == "M=64,N=512\nM=128,N=512"
    assert page.input_value("input[name=trials]") == "7"
    assert page.evaluate("document.activeElement.name") == "shapes"
    assert page.evaluate("window.notReloaded") is True
    # the list region itself was fetched again and swapped, twice at least (a polled attribute: a
    # predicate of wait_for_function is an eval, which the Content-Security-Policy refuses)
    wait_for(lambda: int(page.get_attribute("#jobs-live", "data-refreshed") or 0) >= 2, REFRESH_S + 5,
             "two refreshes of the jobs list", poll_s=0.5)
    assert page.inner_html("#jobs") != before
    assert page.locator(f"#jobs tr[data-job='{queued}'] .state").inner_text() == "queued"

    # a key's plot gains the points of its running search without a reload (rows written as a
    # worker writes them: no worker of this class here), and stops asking once the job has ended
    key_job, key_hash = running_key(world)
    page.goto(f"{base}/keys/matmul/{key_hash}")
    page.evaluate("window.notReloaded = true")
    points = "#trials-plot g[id^=trials-] use"
    assert page.locator(points).count() == 1
    for ms in (0.4, 0.3):
        trial(world, key_job, key_hash, ms)
    wait_for(lambda: page.locator(points).count() == 3, 2 * REFRESH_S + 5, "the plot's new points", poll_s=0.5)
    assert page.evaluate("window.notReloaded") is True
    sql_write(world, "update jobs set state = 'done', finished_at = now() where id = :j", j=key_job)
    sql_write(world, "update job_keys set state = 'done' where job_id = :j", j=key_job)
    wait_for(lambda: page.get_attribute("#key-live", "data-refreshed") is not None, REFRESH_S + 5, "a refresh")
    time.sleep(REFRESH_S + 1)  # the answer after the job's end says 0: no more requests
    seen = page.get_attribute("#key-live", "data-refreshed")
    time.sleep(2 * REFRESH_S)
    assert page.get_attribute("#key-live", "data-refreshed") == seen

    # the fleet page flags the queue no live worker takes
    page.goto(f"{base}/")
    assert "tune.h100" in page.inner_text("#queues") and "no live worker" in page.inner_text("#queues")

    # the job page's cancel button ends the queued jobs; the filters find them
    for job in (queued, later):
        page.goto(f"{base}/jobs/{job}")
        page.click("#cancel button")
        page.wait_for_url(f"{base}/jobs/{job}")
        assert page.inner_text("#state") == "cancelled" and page.locator("#cancel").count() == 0
    page.goto(f"{base}/jobs")
    page.select_option("#filters select[name=state]", "cancelled")
    page.fill("#filters input[name=device_class]", "h100")
    page.click("#filters button")
    page.wait_for_url(re.compile(r".*/jobs\?state=cancelled.*"))
    assert {r.get_attribute("data-job") for r in page.locator("#jobs tr.job").all()} == {queued, later}
    assert blocked == []
    page.close()
