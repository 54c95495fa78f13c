"""Run the real `tuner` command line in a subprocess with an isolated environment."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from workers.local import fleet_env

ROOT = Path(__file__).resolve().parent.parent


def tuner_env(home: Path, **extra: str) -> dict[str, str]:
    return fleet_env(home, pythonpath=str(ROOT), **extra)


def run_tuner(args: list[str], home: Path, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], env=tuner_env(home, **extra),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def run_json(args: list[str], home: Path, **extra: str):
    proc = run_tuner([*args, "--json"], home, **extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
