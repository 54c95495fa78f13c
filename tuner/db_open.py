"""Opening the configured database for the CLI and the API: reachable, at the right schema, or a
one-line error.

The schema is ours (Alembic, db/migrations) and Optuna's (its RDB storage's tables, for the key
studies): `tuner db upgrade` creates and upgrades both, and so does the embedded SQLite default on
first use; a worker or a local tune on any other database refuses to start without them.

A process checks each URL once (connecting and reading the schema revision cost ~16 ms, which
`tuner serve` would otherwise pay on every request); later failures are the queries' own, which
the API answers with 503 (tuner/api/errors.py). `recheck` forces the full check (/healthz)."""
from __future__ import annotations

from db.models import OPTUNA_TABLES
from db.session import DatabaseError, check_reachable, ensure_schema, missing_tables, sqlite_path, upgrade
from db.urls import redact
from tuner.errors import Unavailable
from tuner.settings import Settings


def upgrade_schema(url: str, revision: str = "head") -> list[str]:
    """Our schema to revision; at head, Optuna's tables too (created or upgraded), then on
    PostgreSQL the grants of the least-privilege roles that exist (db/roles.py). Returns those roles."""
    upgrade(url, revision)
    if revision != "head":
        return []
    from db.roles import grant_if_owner
    from search.studies import upgrade_storage

    upgrade_storage(url)
    return grant_if_owner(url)


def open_for_write(settings: Settings) -> str:
    """The database URL, reachable and upgraded. The embedded SQLite default is created and
    upgraded on first use; any other database must be upgraded with `tuner db upgrade`."""
    url = settings.db_url
    path = sqlite_path(url)
    embedded = path is not None and "TUNER_DB_URL" not in settings.extra.get("explicit", ())
    url = _checked(url, auto_upgrade=path is not None, create_dir=embedded)
    if path is not None and missing_tables(url, OPTUNA_TABLES):
        try:
            upgrade_schema(url)
        except DatabaseError as exc:
            raise Unavailable(str(exc)) from None
    return url


def open_studies(settings: Settings, url: str) -> None:
    """Check that the key studies' storage (Optuna's tables) can be opened, before a worker or a
    local tune starts; it is never created here."""
    from search.studies import storage

    try:
        storage(url, settings.heartbeat_s, settings.worker_dead_after_s)
    except DatabaseError as exc:
        raise Unavailable(str(exc)) from None


_AT_HEAD: set[str] = set()  # URLs this process found reachable and at the schema it needs


def _checked(url: str, auto_upgrade: bool, create_dir: bool = False, recheck: bool = False) -> str:
    if url in _AT_HEAD and not recheck:
        return url
    _AT_HEAD.discard(url)
    try:
        check_reachable(url, create_dir=create_dir)
        ensure_schema(url, auto_upgrade=auto_upgrade)
    except DatabaseError as exc:
        raise Unavailable(str(exc)) from None
    _AT_HEAD.add(url)
    return url


def open_for_read(settings: Settings, recheck: bool = False) -> str:
    """The database URL for a read command; never creates a file."""
    url = settings.db_url
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise Unavailable(f"no tuning database at {path} yet: run `tuner tune ...` first, "
                        "or point TUNER_DB_URL at your database")
    return _checked(url, auto_upgrade=path is not None, recheck=recheck)


__all__ = ["open_for_write", "open_for_read", "open_studies", "upgrade_schema", "sqlite_path", "redact"]
