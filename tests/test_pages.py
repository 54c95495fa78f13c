"""The dashboard's pages of the service's output (issue 33, point 3): /bests with its filters,
pages and export downloads, the imported seeds and runtime misses, every retune run and its
report (a kept configuration is no regression), the key plot's hover titles, best-so-far line
and labels, and times in adaptive units. Rows are written straight to an SQLite database
(tests/rows.py); the pages are read through the app as a browser would."""
import io
import json
import re
import zipfile

import pytest

from db import lifecycle, models, store
from db.session import session_scope
from keys import config_hash
from tests import rows
from tests.test_api import AUTH, make_client, miss
from tuner import display

MOE = {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 8, "num_warps": 4,
       "num_stages": 3}


def cells(html: str, table: str) -> list[list[str]]:
    """The text of each data row's cells of <table id=table> (its rows with a class: not the
    header, nor the line that says the table is empty)."""
    body = re.search(rf'<table id="{table}">(.*?)</table>', html, re.S).group(1)
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
            for tr in re.findall(r"<tr class=[^>]*>(.*?)</tr>", body, re.S)]


def test_times_print_in_adaptive_units():
    assert display.duration(0.008) == "8.00 µs" and display.duration(0.0999) == "99.90 µs"
    assert display.duration(0.25) == "0.250 ms" and display.duration(12.5) == "12.500 ms"
    assert display.duration(None) == "-" and display.ms(0.004) == "4.00 µs"
    assert display.time_axis([0.004, 0.05]) == (1000.0, "µs") and display.time_axis([0.004, 0.2]) == (1.0, "ms")
    from tuner.reports.retune import figure

    fast = {"key": {"M": 16}, "dtype": "float16", "old_best_ms_old_stack": 0.008, "old_best_ms_new_stack": 0.009,
            "new_best_ms_new_stack": 0.0085, "regression": False}
    assert figure({"run": "r", "timing": "gpu", "keys": [fast]}).axes[0].get_ylabel() == "median µs"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """Both databases the service runs on: the filters read JSON, which each spells its own way."""
    if request.param == "sqlite":
        yield rows.schema(f"sqlite:///{tmp_path}/t.db")
        return
    from tests.services import pg_database

    with pg_database() as url:
        yield rows.schema(url)


@pytest.fixture
def filled(database, tmp_path):
    url = database
    made = {
        "small": rows.best(url, "h100-sxm-80gb", {"M": 16, "N": 4096, "K": 4096}, 0.008),
        "big": rows.best(url, "h100-sxm-80gb", {"M": 4096, "N": 4096, "K": 4096}, 0.25),
        "bf16": rows.best(url, "h100-sxm-80gb", {"M": 16, "N": 4096, "K": 4096}, 0.007, dtype="bfloat16"),
        "mi300": rows.best(url, "mi300x-192gb", {"M": 16, "N": 4096, "K": 4096}, 0.009),
        "moe": rows.best(url, "h100-sxm-80gb", {"E": 8, "N": 14336, "K": 4096, "topk": 2, "M": 16}, 0.05,
                         kernel="fused_moe", config=MOE),
    }
    rows.best(url, "h100-sxm-80gb", {"M": 4096, "N": 4096, "K": 4096}, 0.2)  # supersedes "big"'s first row
    return url, made, make_client(tmp_path / "home", db_url=url)


def test_bests_are_filtered_paged_and_link_their_keys(filled):
    url, made, api = filled
    html = api.get("/").text
    assert all(f'href="{p}"' in html for p in ("/bests", "/seeds", "/misses"))  # in the nav of every page

    every = api.get("/bests").text
    assert len(cells(every, "bests")) == 5  # current rows only: the superseded one is history
    r = api.get("/bests", params={"kernel": "matmul", "device_class": "h100", "dtype": "float16", "shape": "M=16"})
    assert r.status_code == 200
    (row,) = cells(r.text, "bests")
    assert row[0] == "matmul" and row[1] == "M=16,N=4096,K=4096 float16" and row[2] == "h100-sxm-80gb"
    assert row[5] == "8.00 µs"  # adaptive units: 0.008 ms written as it was measured
    assert f'href="/keys/matmul/{made["small"]}"' in r.text
    assert api.get(f"/keys/matmul/{made['small']}").status_code == 200
    assert len(cells(api.get("/bests", params={"shape": "N=4096,K=4096"}).text, "bests")) == 4
    assert len(cells(api.get("/bests", params={"device_class": "mi300x"}).text, "bests")) == 1
    assert len(cells(api.get("/bests", params={"kernel": "fused_moe", "shape": "topk=2"}).text, "bests")) == 1

    # a page at a time, newest first, the next page named by a cursor: every row once
    seen, link = [], "/bests?limit=2"
    while link:
        page = api.get(link.replace("&amp;", "&")).text
        seen += [c[1] + c[2] for c in cells(page, "bests")]
        assert len(cells(page, "bests")) <= 2
        found = re.search(r'<a id="next" href="([^"]+)"', page)
        link = found and found.group(1)
    assert len(seen) == 5 and len(set(seen)) == 5

    bad = api.get("/bests", params={"device_class": "tpu"})
    assert bad.status_code == 400 and "unknown device class 'tpu'" in bad.text
    assert api.get("/bests", params={"shape": "M"}).status_code == 400


def test_the_selection_downloads_in_the_formats_that_apply(filled):
    url, made, api = filled
    matmul = api.get("/bests", params={"kernel": "matmul", "device_class": "h100"}).text
    assert re.findall(r'data-format="([^"]+)"', matmul) == ["bundle"]  # vLLM's files hold fused_moe only
    link = re.search(r'data-format="bundle" href="([^"]+)"', matmul).group(1).replace("&amp;", "&")
    r = api.get(link)
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    doc = r.json()
    assert doc["format"] == "tuner-bundle"
    assert sorted((e["key"]["dims"]["M"], e["dtype"]) for e in doc["entries"]) == [
        (16, "bfloat16"), (16, "float16"), (4096, "float16")]
    assert {e["device_class"] for e in doc["entries"]} == {"h100-sxm-80gb"}

    everything = api.get("/bests").text
    assert re.findall(r'data-format="([^"]+)"', everything) == ["bundle", "vllm", "sglang"]
    r = api.get("/bests/export/vllm")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        (name,) = z.namelist()
        assert name.startswith("E=8,N=14336,device_name=NVIDIA_H100") and json.loads(z.read(name))["16"] == MOE
    refused = api.get("/bests/export/vllm", params={"kernel": "matmul"})
    assert refused.status_code == 400 and "vllm writes fused_moe and fused_moe_quant" in refused.json()["error"]
    assert api.get("/bests/export/nosuch").status_code == 400


def test_seeds_and_misses_are_pages(database, tmp_path):
    url = database  # no best: a tuned key's misses are not listed
    api = make_client(tmp_path / "home", db_url=url)
    with session_scope(url) as s:
        store.write_imported(s, [{"kernel": "fused_moe", "device_selector": sel, "dtype": "float16",
                                  "dims": {"E": 8, "N": 14336, "M": m}, "dims_hash": f"{sel}{m}", "config": MOE,
                                  "source": f"vllm:E=8,N=14336,device_name={sel}.json"}
                                 for sel in ("h100", "mi300x") for m in (1, 2, 4)])
    page = api.get("/seeds").text
    assert len(cells(page, "seeds")) == 6
    h100 = cells(api.get("/seeds", params={"device_class": "h100", "kernel": "fused_moe"}).text, "seeds")
    assert [r[1] for r in h100] == ["E=8,N=14336,M=1", "E=8,N=14336,M=2", "E=8,N=14336,M=4"]
    assert cells(api.get("/seeds", params={"kernel": "matmul"}).text, "seeds") == []
    first = api.get("/seeds", params={"limit": 4}).text
    after = re.search(r'<a id="next" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    assert len(cells(first, "seeds")) == 4 and len(cells(api.get(after).text, "seeds")) == 2
    # the same rows as JSON, paged by the same cursor
    page1 = api.get("/v1/seeds", params={"limit": 4}, headers=AUTH).json()
    page2 = api.get("/v1/seeds", params={"limit": 4, "after": page1["next"]}, headers=AUTH).json()
    assert len(page1["rows"]) == 4 and len(page2["rows"]) == 2 and page2["next"] is None
    assert {r["device_class"] for r in api.get("/v1/seeds", params={"device_class": "mi300x"},
                                                 headers=AUTH).json()["rows"]} == {"mi300x"}

    for n, level in ((5, "nearest"), (2, "default"), (9, "other_fingerprint")):
        assert api.post("/v1/misses", json={"records": [miss(count=n, level=level)]}, headers=AUTH).status_code == 200
    listed = cells(api.get("/misses").text, "misses")
    assert [(r[4], r[5]) for r in listed] == [("other_fingerprint", "9"), ("nearest", "5"), ("default", "2")]
    assert len(cells(api.get("/misses", params={"device_class": "h100"}).text, "misses")) == 3
    assert cells(api.get("/misses", params={"kernel": "softmax"}).text, "misses") == []
    first = api.get("/misses", params={"limit": 2}).text
    after = re.search(r'<a id="next" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    assert [r[5] for r in cells(api.get(after).text, "misses")] == ["2"]


def retune_job(url: str, run: str, key_hash: str, old_config: dict, old_ms: float, new_config: dict,
               new_ms: float) -> str:
    """A finished retune job of one matmul key: the old best it was queued with, the new best it stored."""
    key = rows.registry.get("matmul").make_key({"M": 64, "N": 64, "K": 64}, "float16")
    with session_scope(url) as s:
        dc_id, fp_id = rows.identity(s, "h100-sxm-80gb", "999.1")
        warm = {key_hash: {"old_config": old_config, "old_ms": old_ms, "old_fingerprint": "abc", "old_trials": 10}}
        job, _ = lifecycle.create_job(s, kind="retune", origin="queued", kernel="matmul", kernel_version=key.version,
                                  keys=[key.to_json()], key_hashes=[key_hash], sampler="tpe", seed=None,
                                  budget_trials=5, request={"retune_run": run, "warm": warm},
                                  device_selector="h100-sxm-80gb", state="done")
        s.query(models.JobKey).filter_by(job_id=job).update({"state": "done"})
        store.write_best(s, kernel="matmul", kernel_version=key.version, key_hash=key_hash, key=key.to_json(),
                         dtype="float16", device_class_id=dc_id, fingerprint_id=fp_id, config=new_config,
                         config_hash=config_hash(new_config), median_ms=new_ms, default_ms=None, speedup=None,
                         cv=0.01, trials=5, job_id=job)
    return job


def test_every_retune_run_is_listed_and_a_kept_config_is_no_regression(database, tmp_path):
    url = database
    h = rows.best(url, "h100-sxm-80gb", {"M": 64, "N": 64, "K": 64}, 0.5)
    other = {**rows.CONFIG, "num_warps": 8}
    retune_job(url, "run-same", h, rows.CONFIG, 0.5, rows.CONFIG, 0.82)  # the same config, 1.64x slower
    retune_job(url, "run-other", h, rows.CONFIG, 0.5, other, 0.9)  # another config, slower
    api = make_client(tmp_path / "home", db_url=url)

    html = api.get("/retune").text
    listed = cells(html, "runs")
    assert sorted(r[0] for r in listed) == ["run-other", "run-same"] and all(r[4] == "1 / 1" for r in listed)
    assert 'href="/retune?run=run-same"' in html and 'href="/retune?run=run-other"' in html
    runs = api.get("/v1/retune-runs", headers=AUTH).json()
    assert sorted(r["run"] for r in runs["rows"]) == ["run-other", "run-same"] and runs["next"] is None
    assert all((r["jobs"], r["keys"], r["keys_ended"]) == (1, 1, 1) for r in runs["rows"])
    assert len(api.get("/v1/retune-runs", params={"limit": 1}, headers=AUTH).json()["rows"]) == 1

    same = api.get("/v1/retune", params={"run": "run-same"}).json()["keys"][0]
    assert not same["regression"] and not any(f.startswith("regression") for f in same["flags"])
    assert same["flags"] == ["old config 1.64x slower on the new stack (kept: still the best)"]
    page = api.get("/retune?run=run-same").text
    assert "regression" not in cells(page, "retune")[0][-1]
    changed = api.get("/v1/retune", params={"run": "run-other"}).json()["keys"][0]
    assert changed["regression"] and changed["flags"][0].startswith("regression: new stack 1.80x slower")


def key_view(bests_ms: list[float]) -> dict:
    configs = [{**rows.CONFIG, "num_warps": w} for w in (1, 2, 4, 8)]
    trials = [{"n": n, "device_class": "h100-sxm-80gb", "fingerprint": "fp1", "status": "ok", "config": c,
               "median_ms": ms, "message": None} for n, (c, ms) in enumerate(zip(configs, (0.09, 0.05, 0.07, 0.04)))]
    trials.append({"n": 4, "device_class": "h100-sxm-80gb", "fingerprint": "fp1", "status": "failed",
                   "config": {**rows.CONFIG, "num_stages": 9}, "median_ms": None, "message": "out of resources"})
    current = [{"device_class": "h100-sxm-80gb", "fingerprint": f"fp{i}", "median_ms": ms}
               for i, ms in enumerate(bests_ms, 1)]
    return {"trials": trials, "current": current}


def test_the_key_plot_names_each_point_and_draws_the_best_so_far():
    from tuner.api.render import plot
    from tuner.reports import trials

    svg = plot(trials.figure(key_view([0.04])))
    group = re.search(r'<g id="trials-ok-0">(.*?)</g>\s*</g>', svg, re.S).group(1)
    titles = re.findall(r"<use [^>]*><title>([^<]*)</title></use>", group)
    assert titles == [f"trial {n}: {display.config_word({**rows.CONFIG, 'num_warps': w})}, {t}"
                      for n, (w, t) in enumerate(zip((1, 2, 4, 8), ("90.00 µs", "50.00 µs", "70.00 µs", "40.00 µs")))]
    failed = re.search(r'<g id="trials-failed">(.*?)</g>\s*</g>', svg, re.S).group(1)
    assert re.findall(r"<title>([^<]*)</title>", failed) == [
        f"trial 4: {display.config_word({**rows.CONFIG, 'num_stages': 9})}, failed: out of resources"]
    fig = trials.figure(key_view([0.04]))
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("best so far")]
    assert list(line.get_ydata()) == pytest.approx([90, 50, 50, 40])  # the running minimum, in µs
    assert fig.axes[0].get_ylabel() == "median µs"


def test_the_key_plot_labels_do_not_overlap():
    from tuner.reports import trials

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = trials.figure(key_view([0.04, 0.0401, 0.0402]))  # three stacks' bests a hair apart
    FigureCanvasAgg(fig)
    fig.tight_layout()  # laid out as the page draws it (tuner.reports.figures.svg)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text

    texts = [t for t in fig.findobj(Text)  # the legend's entries, and any label drawn beside a line
             if t.get_visible() and t.get_text().startswith(("best", "stored", "h100"))]
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert len(boxes) >= 2
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), [t.get_text() for t in texts]


def test_the_new_pages_keep_to_the_content_security_policy(filled):
    url, made, api = filled
    for path in ("/bests", "/seeds", "/misses", "/retune", f"/keys/matmul/{made['small']}"):
        r = api.get(path)
        html = r.text
        assert r.status_code == 200 and "<table id=" in html, path
        assert not re.search(r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son[a-z]+=", html), path
        for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
            assert ref.startswith(("/", "#")) and not ref.startswith("//"), (path, ref)
