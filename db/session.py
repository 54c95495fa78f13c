"""Engines, sessions and schema upgrades for the tuning database.

Every message that can reach a user is one line, says how to fix the problem, and never
shows a password (URLs are rendered with `redact`).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.urls import redact, scrub

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "tuner_alembic_version"  # Optuna's own Alembic uses alembic_version
# pg_advisory_xact_lock key that serializes concurrent `upgrade` calls (any constant of our own)
_MIGRATION_LOCK = 0x74756E6572  # "tuner"
_SCHEMA_LOCK = _MIGRATION_LOCK + 1  # the session lock of `schema_lock` (Optuna's tables)

_engines: dict[str, Engine] = {}
_makers: dict[str, sessionmaker] = {}


class DatabaseError(RuntimeError):
    """A database that cannot be used as configured; the message says what to do. `transient`: the
    server did not answer or refused connections for now (down, starting, an outage), so waiting
    may cure it; a wrong password, a missing database or schema never cures itself."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def private_dir(path: Path) -> None:
    """Create a directory readable by its owner only (0700): TUNER_HOME holds the embedded database
    and broker, whose rows name jobs, kernels and hosts. An existing directory is left as it is."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def private_file(path: Path) -> None:
    """Create an empty file readable by its owner only (0600) unless it exists; SQLite then opens it
    as a new database and gives its journal and WAL files the same mode."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError:  # it exists, or cannot be created: the open that follows says why
        pass


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError:
        raise DatabaseError(f"malformed database URL {redact(url)!r}; write e.g. "
                            "postgresql+psycopg://user@host:5432/db or sqlite:////path/tuner.db") from None


def sqlite_path(url: str | URL) -> Path | None:
    """The file of a SQLite URL; None for other backends and in-memory databases."""
    u = _parse(url) if isinstance(url, str) else url
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def make_engine(url: str) -> Engine:
    """The process's engine for url (one per URL, so pools are shared)."""
    if url in _engines:
        return _engines[url]
    u = _parse(url)
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
        raise DatabaseError(f"unsupported database URL {redact(url)}: {exc}; "
                            "use sqlite:///... or postgresql+psycopg://...") from None
    _engines[url] = engine
    return engine


def dispose_all() -> None:
    """Close every pooled connection (before a test drops its database, or after a fork)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _makers.clear()


def _diagnose(reason: str, sqlite: bool) -> tuple[str, bool]:
    """(how to fix a connection failure, whether it may pass by itself: the server down or
    refusing connections, as in an outage)."""
    low = reason.lower()
    if sqlite:
        return "check that the file and its directory are writable, or set TUNER_DB_URL", False
    if "password" in low or "role" in low or "authentication" in low:
        return "check the user and password in TUNER_DB_URL", False
    if "database" in low and "does not exist" in low:
        return "create the database (createdb NAME) or set TUNER_DB_URL", False
    return "start the database server or set TUNER_DB_URL", True


@contextmanager
def _translated(url: str) -> Iterator[None]:
    """Driver errors about the connection become one-line DatabaseErrors."""
    try:
        yield
    except OperationalError as exc:
        lines = str(exc.orig).strip().splitlines() if exc.orig is not None else []
        reason = scrub(lines[0] if lines else "connection failed", url)  # a host name may hold a password's tail
        hint, transient = _diagnose(reason, sqlite_path(url) is not None)
        raise DatabaseError(f"cannot use database {redact(url)}: {reason}; {hint}", transient) from None


def check_reachable(url: str, *, create_dir: bool = False) -> None:
    """Connect once; DatabaseError with the reason when the database cannot be used.

    create_dir: make the directory of a SQLite file first (0700). Only for the embedded default:
    an explicit URL that names a missing directory is a typo, not a request to create it. A new
    SQLite file is created 0600."""
    u = _parse(url)
    path = sqlite_path(u)
    if path is not None:
        if create_dir:
            private_dir(path.parent)
        elif not path.parent.exists():
            raise DatabaseError(f"cannot open database {redact(url)}: directory {path.parent} does not exist; "
                                "create it or set TUNER_DB_URL")
        private_file(path)
    try:
        with _translated(url), make_engine(url).connect():
            pass
    except DatabaseError:
        raise
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot use database {redact(url)}: {type(exc).__name__}; "
                            "check TUNER_DB_URL") from None


@contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Held while a schema outside our migrations (Optuna's) is created or upgraded, so concurrent
    upgrades wait for each other: a PostgreSQL session advisory lock, or a lock file beside a
    SQLite database."""
    engine = make_engine(url)
    path = sqlite_path(url)
    if engine.dialect.name == "postgresql":
        with _translated(url), engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_LOCK})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _SCHEMA_LOCK})
                conn.commit()
    elif path is not None:
        import fcntl

        fd = os.open(path.with_name(path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
    else:
        yield


def missing_tables(url: str, names: tuple[str, ...]) -> list[str]:
    """Those of the named tables that the database lacks."""
    from sqlalchemy import inspect

    with _translated(url):
        present = set(inspect(make_engine(url)).get_table_names())
    return [n for n in names if n not in present]


def _scripts():
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS))


def head_revision() -> str:
    return _scripts().get_current_head()


def _read_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def current_revision(url: str) -> str | None:
    with _translated(url), make_engine(url).connect() as conn:
        return _read_revision(conn)


def _require_known(url: str, current: str | None) -> None:
    from alembic.util import CommandError

    if current is None:
        return
    try:
        _scripts().get_revision(current)
    except CommandError:
        raise DatabaseError(f"database {redact(url)} is at schema revision {current}, which this tuner does "
                            f"not know (its newest is {head_revision()}): upgrade tuner to the release "
                            "that wrote it") from None


def _migrate(url: str, step: Callable[[Connection], None]) -> None:
    """Run an Alembic command in one transaction that concurrent callers wait for in turn:
    the second finds the schema already at its target and does nothing."""
    engine = make_engine(url)
    sqlite = engine.dialect.name == "sqlite"
    with _translated(url), engine.connect() as conn:
        if sqlite:
            # must precede BEGIN (a no-op inside a transaction): a batch migration copies a table
            # and drops the original, and with foreign keys on that drop cascades to child rows
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock first: a second caller waits here
        elif engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        try:
            _require_known(url, _read_revision(conn))
            step(conn)
            if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                raise DatabaseError(f"migrating {redact(url)} would break foreign keys; nothing was changed")
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def _alembic(url: str, name: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    def step(conn: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        getattr(command, name)(cfg, revision)

    try:
        _migrate(url, step)
    except CommandError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(f"cannot {name} {redact(url)} to {revision!r}: {reason}; "
                            f"give a revision between base and {head_revision()}") from None


def upgrade(url: str, revision: str = "head") -> None:
    _alembic(url, "upgrade", revision)


def downgrade(url: str, revision: str) -> None:
    _alembic(url, "downgrade", revision)


def ensure_schema(url: str, auto_upgrade: bool) -> None:
    """The schema at head, upgrading it when allowed (the embedded SQLite default)."""
    current, head = current_revision(url), head_revision()
    if current == head:
        return
    _require_known(url, current)
    if auto_upgrade:
        upgrade(url)
        return
    where = "empty" if current is None else f"at revision {current}"
    raise DatabaseError(f"database {redact(url)} is {where}, this tuner needs {head}: run `tuner db upgrade`")


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
