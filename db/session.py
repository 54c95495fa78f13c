"""Engines, sessions and schema upgrades for the tuning database.

Every message that can reach a user is one line, says how to fix the problem, and never
shows a password (URLs are rendered with `redact`).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "tuner_alembic_version"  # Optuna's own Alembic uses alembic_version

_engines: dict[str, Engine] = {}
_makers: dict[str, sessionmaker] = {}


class DatabaseError(RuntimeError):
    """A database that cannot be used as configured; the message says what to do."""


def redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def _sqlite_path(url) -> Path | None:
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def make_engine(url: str) -> Engine:
    if url in _engines:
        return _engines[url]
    try:
        u = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"malformed database URL {redact(url)!r}; write e.g. "
                            "postgresql+psycopg://user@host:5432/db or sqlite:////path/tuner.db") from None
    try:
        if u.get_backend_name() == "sqlite":
            engine = create_engine(url, connect_args={"timeout": 30})

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn, _record):  # WAL lets workers read while another writes
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        else:
            args = {"connect_timeout": 3} if u.get_backend_name() == "postgresql" else {}
            engine = create_engine(url, pool_pre_ping=True, connect_args=args)
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(f"unsupported database URL {redact(url)}: {exc}") from None
    _engines[url] = engine
    return engine


def dispose_all() -> None:
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _makers.clear()


def check_reachable(url: str) -> None:
    """Connect once; DatabaseError with the reason when the database cannot be used."""
    try:
        u = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"malformed database URL {redact(url)!r}") from None
    path = _sqlite_path(u)
    if path is not None and not path.parent.exists():
        raise DatabaseError(f"cannot open database {redact(url)}: directory {path.parent} does not exist; "
                            "create it or set TUNER_DB_URL")
    try:
        with make_engine(url).connect():
            pass
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "connection failed"
        raise DatabaseError(f"cannot reach database {redact(url)}: {reason}; start it or set TUNER_DB_URL") from None
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot use database {redact(url)}: {type(exc).__name__}") from None


def _alembic_config(connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    with make_engine(url).begin() as conn:
        command.upgrade(_alembic_config(conn), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    with make_engine(url).begin() as conn:
        command.downgrade(_alembic_config(conn), revision)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with make_engine(url).connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def ensure_schema(url: str, auto_upgrade: bool) -> None:
    """The schema at head, upgrading it when allowed (the embedded SQLite default)."""
    current, head = current_revision(url), head_revision()
    if current == head:
        return
    if auto_upgrade:
        upgrade(url)
        return
    where = "empty" if current is None else f"at revision {current}"
    raise DatabaseError(f"database {redact(url)} is {where}, this tuner needs {head}: run `tuner db upgrade`")


def has_table(url: str, name: str) -> bool:
    with make_engine(url).connect() as conn:
        return inspect(conn).has_table(name)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits when the block succeeds and rolls back when it raises."""
    maker = _makers.get(url)
    if maker is None:
        maker = _makers[url] = sessionmaker(make_engine(url), expire_on_commit=False)
    session = maker()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
