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
