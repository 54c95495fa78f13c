"""Files the service writes (issue 18, item 10): TUNER_HOME and its databases are the owner's only,
a bundle is readable by a runtime of another user, and beat's schedule is JSON, never a pickle."""
import json
import stat
import subprocess
import sys
import time

from tests.cli_helpers import ROOT, run_json, run_tuner, tuner_env


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_home_and_its_databases_are_private_and_a_bundle_is_readable(tmp_path):
    home = tmp_path / "home"
    job = run_json(["submit", "matmul", "--shape", "M=8,N=8,K=8", "--device-class", "cpu"], home)["job"]
    assert job
    assert mode(home) == 0o700
    files = {p.name: mode(p) for p in home.iterdir() if p.suffix in (".db", ".db-wal", ".db-shm")}
    assert {"tuner.db", "broker.db"} <= set(files) and set(files.values()) == {0o600}, files
    bundle = tmp_path / "bundle.json"
    assert run_tuner(["export", "--format", "bundle", "-o", str(bundle)], home).returncode == 0
    assert mode(bundle) == 0o644


def test_beat_keeps_its_schedule_as_json_in_a_private_file(tmp_path):
    home = tmp_path / "home"
    env = tuner_env(home, TUNER_RETUNE_CRON="0 3 * * *")
    log = open(tmp_path / "beat.log", "w")
    beat = subprocess.Popen([sys.executable, "-m", "tuner.cli", "scheduler"], env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    schedule = home / "beat-schedule.json"
    try:
        end = time.monotonic() + 120
        while not schedule.exists() and beat.poll() is None and time.monotonic() < end:
            time.sleep(0.2)
    finally:
        beat.terminate()
        beat.wait(30)
        log.close()
    assert schedule.exists(), (tmp_path / "beat.log").read_text()[-2000:]
    assert mode(schedule) == 0o600
    assert isinstance(json.loads(schedule.read_text()), dict)
    assert not list(home.glob("celerybeat-schedule*"))  # Celery's default: a pickle shelve


def test_a_device_name_that_is_a_path_never_takes_an_export_outside_its_folder(tmp_path):
    """A device-class row whose reported name is `../../../x`, written straight into the database
    (what a worker on a tampered driver, or anyone with the worker role, could store): every export
    format writes nothing outside -o; those whose file would leave it refuse in one line, exit 2,
    having written nothing at all."""
    from sqlalchemy import text

    from db.session import make_engine
    from tests import rows
    from tests.test_cli_errors import assert_one_line_error

    home = tmp_path / "home"
    home.mkdir()
    url = rows.schema(f"sqlite:///{home}/tuner.db")
    rows.best(url, "h100-sxm-80gb", {"E": 4, "N": 32, "K": 64, "topk": 2, "M": 16}, 1.0, kernel="fused_moe",
              config={"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1,
                      "num_warps": 4, "num_stages": 3})
    rows.best(url, "h100-sxm-80gb", {"M": 16, "K": 4096, "RANK": 16, "SLICES": 1, "LORAS": 1}, 1.0,
              kernel="lora_shrink", config={"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 256, "SPLIT_K": 8,
                                            "num_warps": 4, "num_stages": 2})
    with make_engine(url).begin() as c:
        c.execute(text("UPDATE device_classes SET device_names = :n WHERE slug = 'h100-sxm-80gb'"),
                  {"n": json.dumps(["../../../x"])})
    top = tmp_path / "d1" / "d2" / "d3" / "d4"
    for fmt, refused in (("bundle", False), ("vllm", True), ("sglang", False), ("vllm-lora", True)):
        out = top / fmt
        out.mkdir(parents=True)
        target = out / "b.json" if fmt == "bundle" else out
        proc = run_tuner(["export", "--format", fmt, "-o", str(target)], home)
        if refused:
            assert_one_line_error(proc, "would land outside")
            assert not any(out.iterdir()), list(out.rglob("*"))
        else:
            assert proc.returncode == 0, proc.stderr
            assert any(p.is_file() for p in out.rglob("*"))
    outside = [p for p in (tmp_path / "d1").rglob("*") if p.is_file() and not any(
        p.is_relative_to(top / fmt) for fmt in ("bundle", "vllm", "sglang", "vllm-lora"))]
    assert outside == []


def test_a_worker_refuses_to_register_a_device_name_that_is_not_a_safe_file_name(tmp_path):
    from dataclasses import replace

    import pytest
    from sqlalchemy import text

    from db.session import make_engine, upgrade
    from devices.classes import CPU_INTERPRETER, check_device_name
    from devices.fingerprint import live_fingerprint
    from keys import SpecError
    from tuner import settings as settings_mod
    from tuner.worker_process import worker_config
    from workers.service import WorkerService

    for good in ("", "NVIDIA H100 80GB HBM3", "AMD Instinct MI300X (gfx942)", "Tesla V100-SXM2-16GB"):
        assert check_device_name(good) == good
    for bad in ("../../../x", "a/b", "..", "H100\nx", "x" * 101, "NVIDIA H100; rm", "C:\\x"):
        with pytest.raises(SpecError):
            check_device_name(bad)
    url = f"sqlite:///{tmp_path}/tuner.db"
    upgrade(url)
    dc = replace(CPU_INTERPRETER, device_name="../../../x")
    with pytest.raises(SpecError, match="not a safe file name") as refused:
        WorkerService(worker_config(settings_mod.get(), url, "cpu", "w"), dc, live_fingerprint(dc), print)
    assert "\n" not in str(refused.value)
    with make_engine(url).connect() as c:
        assert c.execute(text("SELECT count(*) FROM device_classes")).scalar() == 0
        assert c.execute(text("SELECT count(*) FROM workers")).scalar() == 0
