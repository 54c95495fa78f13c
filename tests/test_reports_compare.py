"""`tuner report compare`, `tuner sweep-shapes` and `tuner report shapes`: the reports over rows
written through db.store (device classes this machine does not have, with times the test
chooses), and the CLI's commands over them."""
import json
import math
import sqlite3

import pytest

from tests import rows
from tests.cli_helpers import run_json, run_tuner
from tests.test_cli_errors import assert_one_line_error
from tuner import settings as settings_mod
from tuner.reports import compare, shapes

SHAPES = [{"M": 16, "N": 4096, "K": 4096}, {"M": 128, "N": 4096, "K": 4096}, {"M": 4096, "N": 4096, "K": 4096}]


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    return home


def settings(home, **env):
    return settings_mod.from_env({"TUNER_HOME": str(home), **env})


def db(home) -> str:
    return rows.schema(f"sqlite:///{home}/tuner.db")


def test_compare_two_classes(home):
    url = db(home)
    times = {"h100-sxm-80gb": [0.030, 0.040, 0.200], "mi300x-192gb": [0.025, 0.050, 0.160]}
    for slug, ms in times.items():
        for dims, t in zip(SHAPES, ms):
            rows.best(url, slug, dims, t)
    rows.best(url, "h100-sxm-80gb", {"M": 64, "N": 64, "K": 64}, 0.01)  # H100 only
    rows.best(url, "mi300x-192gb", {"M": 32, "N": 64, "K": 64}, 0.01)  # MI300X only
    rows.best(url, "h100-sxm-80gb", SHAPES[2], 0.5, driver="550.1")  # an older stack's row: not the newest
    rows.best(url, "h100-sxm-80gb", SHAPES[2], 0.19, driver="560.1")  # the newest current row stands for the key

    r = compare.report(settings(home, TUNER_DEVICE_PRICES="h100-sxm-80gb=3.60,mi300x-192gb=1.80"), ["h100", "mi300x"])
    assert r["a_classes"] == ["h100-sxm-80gb"] and r["b_classes"] == ["mi300x-192gb"]
    assert [k["key"] for k in r["keys"]] == SHAPES
    ratios = [0.030 / 0.025, 0.040 / 0.050, 0.19 / 0.160]
    assert [k["ratio"] for k in r["keys"]] == pytest.approx(ratios)
    assert r["per_kernel"]["matmul"]["geomean_ratio"] == pytest.approx(math.prod(ratios) ** (1 / 3))
    big = r["keys"][2]
    assert big["b"]["tflops"] == pytest.approx(2 * 4096 ** 3 / 0.160e-3 / 1e12)
    # GB/s from the bytes a launch must move: A, B and C once each (the rows are fp16)
    assert big["b"]["gbps"] == pytest.approx(3 * 4096 ** 2 * 2 / 0.160e-3 / 1e9)
    # $3.60 an hour is $0.001 a second: a million launches of 0.19 ms take 190 s
    assert big["a"]["cost_per_million"] == pytest.approx(0.19) and big["b"]["cost_per_million"] == pytest.approx(0.08)
    assert [o["key"] for o in r["only_a"]] == [{"M": 64, "N": 64, "K": 64}]
    assert [o["key"] for o in r["only_b"]] == [{"M": 32, "N": 64, "K": 64}]
    assert r["timing"] == "gpu"
    assert compare.report(settings(home), ["h100", "mi300x"])["keys"][0]["a"]["cost_per_million"] is None


def test_compare_refuses_what_is_not_two_classes(home):
    from tuner.errors import UserError

    db(home)
    with pytest.raises(UserError, match="give two device classes"):
        compare.report(settings(home), ["h100"])
    with pytest.raises(UserError, match="name the same class"):
        compare.report(settings(home), ["h100", "h100-sxm-80gb"])


@pytest.mark.slow
def test_report_compare_cli(home, tmp_path):
    url = db(home)
    for slug, t in (("h100-sxm-80gb", 0.2), ("mi300x-192gb", 0.16)):
        rows.best(url, slug, SHAPES[2], t)
    out = run_json(["report", "compare", "--device-class", "h100", "--device-class", "mi300x",
                    "--plot", str(tmp_path / "c.png")], home)
    assert out["per_kernel"]["matmul"]["geomean_ratio"] == pytest.approx(1.25)
    assert (tmp_path / "c.png").stat().st_size > 5000
    table = run_tuner(["report", "compare", "--device-class", "h100", "--device-class", "mi300x"], home)
    assert table.returncode == 0 and "geometric mean A/B 1.250" in table.stdout
    assert all(len(line) <= 80 for line in table.stdout.splitlines()), table.stdout
    assert_one_line_error(run_tuner(["report", "compare", "--device-class", "h100"], home), "give two device classes")
    assert_one_line_error(run_tuner(["report", "compare", "--device-class", "h100", "--device-class", "tpu"], home),
                          "unknown device class 'tpu'")


@pytest.mark.slow
def test_shape_sensitivity(home, tmp_path):
    url = db(home)
    # tuned speed rises with N, except N=4000 (a dip) ; N=3968 and 4096 stored for another M: not this curve
    tflops = {3968: 600, 4000: 480, 4032: 620, 4064: 630, 4096: 700, 4128: 640}
    for n, tf in tflops.items():
        rows.best(url, "h100-sxm-80gb", {"M": 4096, "N": n, "K": 4096}, 2 * 4096 * n * 4096 / (tf * 1e12) * 1e3)
    rows.best(url, "h100-sxm-80gb", {"M": 16, "N": 4000, "K": 4096}, 1.0)
    r = shapes.report(settings(home), "matmul", "N=3968:4224:32", "M=4096,K=4096", "h100", "float16")
    assert [p["value"] for p in r["points"]] == sorted(tflops)
    assert [round(p["tflops"]) for p in r["points"]] == [tflops[n] for n in sorted(tflops)]
    assert r["dips"] == [4000]  # 480 against the mean of 600 and 620: 21% below
    assert [p["value"] for p in r["points"] if p["power_of_two"]] == [4096]
    assert r["missing"] == [4160, 4192, 4224]
    assert shapes.report(settings(home), "matmul", "N", "M=4096,K=4096", "h100", "float16")["missing"] == []
    out = run_json(["report", "shapes", "matmul", "--vary", "N", "--shape", "M=4096,K=4096", "--device-class", "h100",
                    "--dtype", "float16", "--plot", str(tmp_path / "s.png")], home)
    assert out["dips"] == [4000] and (tmp_path / "s.png").stat().st_size > 5000
    table = run_tuner(["report", "shapes", "matmul", "--vary", "N", "--shape", "M=4096,K=4096", "--device-class",
                       "h100", "--dtype", "float16"], home)
    assert "more than 10% below their neighbours: 4000" in table.stdout
    assert all(len(line) <= 80 for line in table.stdout.splitlines()), table.stdout
    assert_one_line_error(run_tuner(["report", "shapes", "matmul", "--vary", "Q", "--device-class", "h100"], home),
                          "matmul has no dimension 'Q' to vary")


TRIVIAL = "tests.kernels.trivial"
SWEEP = ["sweep-shapes", "trivial", "--vary", "N=16:48:16", "--device-class", "cpu", "--trials", "2"]


def jobs(home) -> list[str]:
    with sqlite3.connect(home / "tuner.db") as conn:
        return [json.loads(r[0])["keys"][0]["dims"]["N"] for r in conn.execute("select request from jobs")]


def test_sweep_shapes_queues_one_job_per_point(home):
    out = run_json(SWEEP, home, TUNER_KERNEL_MODULES=TRIVIAL)
    assert len(out["jobs"]) == 3 and sorted(jobs(home)) == [16, 32, 48]


@pytest.mark.parametrize("args,says", [
    (["--vary", "N=48:16:16"], "malformed --vary 'N=48:16:16'"),
    (["--vary", "N=1:100000:1"], "more than 256 points"),
    (["--vary", "N"], "gives no values"),
    (["--vary", "N=16,abc"], "malformed --vary"),
    (["--vary", "N=16:48:16", "--shape", "N=4"], "N is both varied (--vary) and fixed (--shape)"),
    (["--vary", "Q=1:3:1"], "shape for trivial has missing N"),
])
def test_sweep_shapes_bad_input_queues_nothing(home, args, says):
    argv = ["sweep-shapes", "trivial", *args, "--device-class", "cpu"]
    assert_one_line_error(run_tuner(argv, home, TUNER_KERNEL_MODULES=TRIVIAL), says)
    assert not (home / "tuner.db").exists()


def test_a_sweep_with_one_unfit_point_queues_none(home):
    argv = ["sweep-shapes", "matmul", "--vary", "N=4096,100000", "--shape", "M=100000,K=100000", "--dtype", "bfloat16",
            "--device-class", "h100"]
    assert_one_line_error(run_tuner(argv, home), "GiB of device class h100")
    assert not (home / "tuner.db").exists()
