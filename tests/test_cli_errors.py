"""Bad input: one line naming the problem, exit status 2, nothing written."""
import sqlite3
from pathlib import Path

import pytest

from tests.cli_helpers import ROOT, run_tuner

DATA = Path(__file__).parent / "data"

CASES = {
    "unknown kernel": (["tune", "nosuchkernel", "--shape", "M=64,N=64,K=64"], "unknown kernel 'nosuchkernel'"),
    "non-integer dim": (["tune", "matmul", "--shape", "M=abc,N=64,K=64"], "M='abc' is not an integer"),
    "negative dim": (["tune", "matmul", "--shape", "M=-1,N=64,K=64"], "M=-1 must be a positive integer"),
    "missing dim": (["tune", "matmul", "--shape", "M=64,N=64"], "missing K"),
    "malformed shape": (["tune", "matmul", "--shape", "M64,N=64,K=64"], "malformed shape"),
    "unknown dtype": (["tune", "matmul", "--shape", "M=64,N=64,K=64", "--dtype", "float8"], "dtype 'float8'"),
    "zero trials": (["tune", "matmul", "--shape", "M=64,N=64,K=64", "--trials", "0"], "--trials 0 is impossible"),
    "unknown sampler": (["tune", "matmul", "--shape", "M=64,N=64,K=64", "--sampler", "magic"], "unknown sampler"),
    "unknown device": (["tune", "matmul", "--shape", "M=64,N=64,K=64", "--device", "tpu"], "unknown --device"),
    "no rotation sets": (["tune", "matmul", "--shape", "M=64,N=64,K=64", "--rotate-buffers", "0"],
                         "--rotate-buffers 0 is out of range"),
    "too many rotation sets": (["tune", "matmul", "--shape", "M=64,N=64,K=64", "--rotate-buffers", "64"],
                               "--rotate-buffers 64 is out of range"),
    "negative max cv": (["tune", "matmul", "--shape", "M=64,N=64,K=64", "--max-cv", "-0.1"],
                        "--max-cv -0.1 is impossible"),
    "graphs on the interpreter": (["tune", "matmul", "--shape", "M=64,N=64,K=64", "--device", "cpu",
                                   "--cuda-graph"], "--cuda-graph needs a GPU"),
    "graphs for the cpu class": (["submit", "matmul", "--shape", "M=64,N=64,K=64", "--device-class", "cpu",
                                  "--cuda-graph"], "--cuda-graph needs a GPU"),
    "trial too big for the host": (["tune", "matmul", "--shape", "M=200000,N=200000,K=200000", "--device", "cpu"],
                                   "more than the"),
    "trial too big for the class": (["submit", "matmul", "--shape", "M=100000,N=100000,K=100000", "--dtype",
                                     "bfloat16", "--device-class", "h100"], "GiB of device class h100"),
    "negative wait for services": (["worker", "--device", "cpu", "--wait-for-services", "-1"],
                                   "--wait-for-services -1 is impossible"),
    "wait for services not a number": (["serve", "--wait-for-services", "nan"], "--wait-for-services nan is impossible"),
    # bounded writes (issue 31, item 5): batches in flight per key, and messages per request
    "parallel past the bound": (["submit", "matmul", "--shape", "M=64,N=64,K=64", "--device-class", "cpu",
                                 "--parallel", "1000000000"], "--parallel 1000000000 is out of range: give 1 to 64"),
    "zero parallel": (["submit", "matmul", "--shape", "M=64,N=64,K=64", "--device-class", "cpu", "--parallel", "0"],
                      "--parallel 0 is out of range"),
    "too many messages": (["submit", "matmul", *[a for m in range(1, 66) for a in ("--shape", f"M={m},N=64,K=64")],
                           "--device-class", "cpu", "--trials", "1000", "--parallel", "64"],
                          "65 keys x 64 batches would queue 4160 messages, more than 4096"),
    # what the argument parser (typer, click) refuses: the same one line, never a traceback
    "non-integer trials": (["tune", "matmul", "--shape", "M=64,N=64,K=64", "--trials", "abc"],
                           "Invalid value for '--trials'"),
    "unknown option": (["tune", "matmul", "--shape", "M=64,N=64,K=64", "--bogus"], "No such option: --bogus"),
    "unknown command": (["tunes", "matmul"], "No such command 'tunes'"),
    "missing kernel": (["tune"], "give a kernel and --shape"),
    # tuner lookup, tuner misses, tuner retune --misses
    "lookup unknown kernel": (["lookup", "nosuchkernel", "--shape", "M=64"], "unknown kernel 'nosuchkernel'"),
    "lookup missing dim": (["lookup", "matmul", "--shape", "M=64,N=64"], "missing K"),
    "lookup unknown class": (["lookup", "matmul", "--shape", "M=64,N=64,K=64", "--device-class", "tpu"],
                             "unknown device class 'tpu'"),
    "lookup a family": (["lookup", "matmul", "--shape", "M=64,N=64,K=64", "--device-class", "h100"],
                        "names 3 classes"),
    "lookup bad fingerprint": (["lookup", "matmul", "--shape", "M=64,N=64,K=64", "--fingerprint", "a b"],
                               "is not a fingerprint hash"),
    "misses unknown class": (["misses", "--device-class", "tpu"], "unknown device class 'tpu'"),
    "misses import missing file": (["misses", "import", "/no/such/misses.jsonl"], "cannot read miss file"),
    "misses import bad line": (["misses", "import", str(DATA / "misses-bad-line.jsonl")],
                               # its first record names a kernel this process has not registered
                               "misses-bad-line.jsonl:1 is not a miss record (unknown kernel 'tiles'"),
    "misses import no file": (["misses", "import"], "Missing argument"),
    "retune top without misses": (["retune", "--top", "3"], "add --misses"),
    "retune zero top": (["retune", "--misses", "--top", "0"], "--top 0 is impossible"),
    "retune zero min count": (["retune", "--misses", "--min-count", "0"], "--min-count 0 is impossible"),
    "retune non-integer top": (["retune", "--misses", "--top", "many"], "Invalid value for '--top'"),
}


def assert_one_line_error(proc, expected: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path):
    args, expected = CASES[case]
    home = tmp_path / "home"
    proc = run_tuner(args, home)
    assert_one_line_error(proc, expected)
    assert not home.exists(), f"{case} created {list(home.rglob('*'))}"


def test_unreachable_database(tmp_path):
    home = tmp_path / "home"
    proc = run_tuner(["tune", "matmul", "--shape", "M=64,N=64,K=64"], home,
                     TUNER_DB_URL="postgresql+psycopg://tuner:s3cret@127.0.0.1:1/nowhere")
    assert_one_line_error(proc, "127.0.0.1:1")
    assert "s3cret" not in proc.stderr
    assert not home.exists()


def test_sqlite_in_missing_directory(tmp_path):
    proc = run_tuner(["tune", "matmul", "--shape", "M=64,N=64,K=64"], tmp_path / "home",
                     TUNER_DB_URL=f"sqlite:///{tmp_path}/no/such/dir/t.db")
    assert_one_line_error(proc, "does not exist")
    assert not (tmp_path / "no").exists()


@pytest.mark.slow
def test_bad_input_leaves_no_job_row_in_an_existing_database(tmp_path):
    home = tmp_path / "home"
    assert run_tuner(["db", "upgrade"], home).returncode == 0
    for args, _ in CASES.values():
        assert run_tuner(args, home).returncode == 2
    with sqlite3.connect(home / "tuner.db") as conn:
        assert conn.execute("select count(*) from jobs").fetchone()[0] == 0
        assert conn.execute("select count(*) from tuning_trials").fetchone()[0] == 0


@pytest.mark.parametrize("args", [["best", "matmul", "--shape", "M=64,N=64,K=64"],
                                  ["lookup", "matmul", "--shape", "M=64,N=64,K=64"], ["misses"]])
def test_read_commands_without_a_database(tmp_path, args):
    home = tmp_path / "home"
    proc = run_tuner(args, home)
    assert_one_line_error(proc, "no tuning database")
    assert not home.exists()


def test_a_job_that_does_not_end_done_exits_1(tmp_path):
    """`submit --wait` on a class with no worker: the status is printed and the exit status says so."""
    proc = run_tuner(["submit", "matmul", "--shape", "M=8,N=8,K=8", "--device-class", "h100", "--wait",
                      "--timeout", "1"], tmp_path / "home")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "queued" in proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["jobs"], ["tune", "matmul", "--shape", "M=8,N=8,K=8"], ["db", "upgrade"]])
def test_malformed_database_url(tmp_path, args):
    proc = run_tuner(args, tmp_path / "home", TUNER_DB_URL="nonsense")
    assert_one_line_error(proc, "malformed database URL 'nonsense'")
    assert not (tmp_path / "home").exists()


def test_sqlite_broker_in_missing_directory(tmp_path):
    proc = run_tuner(["submit", "matmul", "--shape", "M=8,N=8,K=8", "--device-class", "cpu"], tmp_path / "home",
                     TUNER_BROKER_URL=f"sqla+sqlite:///{tmp_path}/no/such/dir/broker.db")
    assert_one_line_error(proc, "of its SQLite file does not exist")
    assert not (tmp_path / "home").exists() and not (tmp_path / "no").exists()


@pytest.mark.parametrize("name, value", [("TUNER_STALL_S", "two minutes"), ("TUNER_RUNTIME_DEADLINE_MS", "-5"),
                                         ("TUNER_RETUNE_MISSES", "maybe")])
def test_a_bad_setting_stops_the_cli_with_one_line(tmp_path, name, value):
    """The runtime reads settings leniently; the CLI does not."""
    proc = run_tuner(["jobs"], tmp_path / "home", **{name: value})
    assert_one_line_error(proc, f"{name}={value!r}")
    assert not (tmp_path / "home").exists()


# Found by fuzzing (issue 18, item 11), run against an existing PostgreSQL database that holds one
# finished job: each is one line, exit 2, at most ~80 characters of what was typed echoed, nothing
# written and no job row. {tmp}: a directory on PYTHONPATH holding the broken modules below.
HUGE = "9" * 100_000
FUZZ = {
    "negative seed": (["tune", "matmul", "--shape", "M=64,N=64,K=64", "--seed", "-1"], "--seed -1 is out of range", {}),
    "seed past int4": (["submit", "matmul", "--shape", "M=64,N=64,K=64", "--device-class", "cpu", "--seed",
                        str(2**40)], "is out of range", {}),
    "trials past int4": (["tune", "matmul", "--shape", "M=64,N=64,K=64", "--trials", "10000000000"], "is too many", {}),
    "trials over the bound": (["submit", "matmul", "--shape", "M=64,N=64,K=64", "--device-class", "cpu",
                               "--trials", "100001"], "at most 100000", {}),
    "trials as a float": (["tune", "matmul", "--shape", "M=64,N=64,K=64", "--trials", "1e10"],
                          "Invalid value for '--trials'", {}),
    "a 100 kB dim": (["tune", "matmul", "--shape", f"M={HUGE},N=64,K=64"], "is too long", {}),
    "a 100 kB shape": (["tune", "matmul", "--shape", f"M{HUGE}"], "malformed shape", {}),
    "a 100 kB dtype": (["tune", "matmul", "--shape", "M=64,N=64,K=64", "--dtype", HUGE], "dtype", {}),
    "a 100 kB kernel": (["tune", HUGE, "--shape", "M=64,N=64,K=64"], "unknown kernel", {}),
    "a kernel module with a syntax error": (["tune", "mine", "--shape", "N=1"], "SyntaxError",
                                            {"TUNER_KERNEL_MODULES": "fuzz_syntax"}),
    "a kernel module that raises at import": (["tune", "mine", "--shape", "N=1"], "RuntimeError: no import for you",
                                              {"TUNER_KERNEL_MODULES": "fuzz_raises"}),
    "export into a missing directory": (["export", "-o", "{tmp}/no/such/dir/b.json"], "does not exist", {}),
    "export where nothing can be written": (["export", "-o", "/sys/b.json"], "cannot write /sys/b.json", {}),
    "a cpu trial bigger than the host": (["submit", "matmul", "--shape", "M=200000,N=200000,K=200000",
                                          "--device-class", "cpu"], "of this host", {}),
    "cancel a finished job": (["cancel", "{done}"], "has already ended (done)", {}),
}


@pytest.fixture(scope="module")
def fuzz_db(tmp_path_factory):
    """A PostgreSQL database (int4 columns) with one job that ended `done`."""
    from tests.cli_helpers import run_json
    from tests.services import pg_database

    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "fuzz_syntax.py").write_text("def broken(:\n")
    (tmp / "fuzz_raises.py").write_text("raise RuntimeError('no import for you')\n")
    with pg_database() as url:
        assert run_tuner(["db", "upgrade"], tmp / "setup", TUNER_DB_URL=url).returncode == 0
        done = run_json(["tune", "matmul", "--shape", "M=16,N=16,K=16", "--trials", "1", "--device", "cpu"],
                        tmp / "setup", TUNER_DB_URL=url)["job"]
        yield {"url": url, "tmp": tmp, "done": done}


def _rows(url):
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return (c.execute(text("SELECT count(*) FROM jobs")).scalar(),
                    c.execute(text("SELECT count(*) FROM tuning_trials")).scalar(),
                    c.execute(text("SELECT state FROM jobs")).scalars().all())
    finally:
        engine.dispose()


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(FUZZ))
def test_fuzzed_input_is_one_line_exit_2_and_writes_nothing(case, fuzz_db, tmp_path):
    args, expected, env = FUZZ[case]
    tmp = fuzz_db["tmp"]
    args = [a.replace("{tmp}", str(tmp_path)).replace("{done}", fuzz_db["done"]) for a in args]
    home = tmp_path / "home"
    before = _rows(fuzz_db["url"])
    proc = run_tuner(args, home, TUNER_DB_URL=fuzz_db["url"], PYTHONPATH=f"{ROOT}:{tmp}", **env)
    assert_one_line_error(proc, expected)
    assert len(proc.stderr) < 400, proc.stderr[:500]  # what was typed is echoed in ~80 characters at most
    assert _rows(fuzz_db["url"]) == before, case
    assert not home.exists() and not (tmp_path / "no").exists(), case
