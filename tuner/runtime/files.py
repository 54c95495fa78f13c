"""The runtime's own files under TUNER_HOME (the config server's copy, misses.jsonl): this user's
only. A model server's host is often shared, and the copy holds what the server keeps behind its
token."""
from __future__ import annotations

from pathlib import Path

PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def private_dir(path: Path) -> None:
    """Create path and its missing parents 0700; what exists already is left as it is."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)
