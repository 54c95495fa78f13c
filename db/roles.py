"""Least-privilege PostgreSQL roles: what each may do with the tuning database, as the grants that
`tuner db upgrade` applies after every migration (so a table added later is covered at once).

The roles (cluster-wide: created once by an administrator, with the SQL in the README's
"Credentials", or by deploy/postgres-roles.sh when docker-compose creates the database):
  - the owner, which runs `tuner db upgrade` (docker-compose's POSTGRES_USER): owns every table,
    ours and Optuna's, and is the only role that may create, alter or drop one;
  - WORKER (`tuner_worker`): workers, the scheduler and the CLI. Reads and writes the rows of the
    service (jobs, trials, bests, leases, the Optuna studies); deletes only leases, claims, old
    miss rows and the rows of long-gone workers (the janitor's prunes) and Optuna's rows; never
    creates, alters, truncates or drops a table, nor deletes a job, a trial or a best configuration;
  - API (`tuner_api`): `tuner serve`. Reads every table; writes only jobs and their keys (submit,
    cancel), adds miss counts to `runtime_misses` and reported winners to `reported_configs`
    (POST /v1/misses); never a trial, a best, a worker or a device name, and deletes nothing;
  - RUNTIME (`tuner_runtime`): inference hosts (`tuner.runtime`). Reads the best configurations
    and the identity rows they join, nothing else; adds miss counts to `runtime_misses`, and reads
    and adds (never changes: the first stays) the winners drop-in kernels timed, `reported_configs`.
Grants go only to roles that exist; a role this database does not know is skipped.
"""
from __future__ import annotations

from sqlalchemy import text

WORKER, API, RUNTIME = "tuner_worker", "tuner_api", "tuner_runtime"
# our tables, and what the worker role may do with each (Optuna's tables: all but DDL)
WORKER_TABLES = {
    "device_classes": "SELECT, INSERT, UPDATE", "stack_fingerprints": "SELECT, INSERT, UPDATE",
    "workers": "SELECT, INSERT, UPDATE, DELETE",  # the janitor deletes those gone for TUNER_WORKERS_KEEP_DAYS
    "jobs": "SELECT, INSERT, UPDATE", "job_keys": "SELECT, INSERT, UPDATE",
    "tuning_trials": "SELECT, INSERT, UPDATE", "best_configs": "SELECT, INSERT, UPDATE",
    "tuner_locks": "SELECT, INSERT, UPDATE, DELETE", "trial_claims": "SELECT, INSERT, UPDATE, DELETE",
    "tuner_alembic_version": "SELECT",
    # the runtime's miss counts (`tuner misses`, `retune --misses` read them; the janitor prunes the
    # old ones) and imported seed configurations (added and updated, never deleted)
    "runtime_misses": "SELECT, INSERT, UPDATE, DELETE", "imported_configs": "SELECT, INSERT, UPDATE",
    # winners drop-in kernels reported (`tuner misses import`): first wins, so never updated
    "reported_configs": "SELECT, INSERT",
}
OPTUNA_READ_ONLY = ("version_info", "alembic_version")  # Optuna's schema version: `tuner db upgrade` writes it
API_WRITES = {"jobs": "SELECT, INSERT, UPDATE", "job_keys": "SELECT, INSERT, UPDATE",
              "runtime_misses": "SELECT, INSERT, UPDATE",
              "reported_configs": "SELECT, INSERT"}  # every other table: SELECT
RUNTIME_TABLES = {"best_configs": "SELECT", "device_classes": "SELECT", "stack_fingerprints": "SELECT",
                  "tuner_alembic_version": "SELECT",
                  "runtime_misses": "SELECT, INSERT, UPDATE",  # the runtime's miss counts
                  "reported_configs": "SELECT, INSERT"}  # drop-ins' winners: read, and added, never changed


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def grant(conn, worker: str = WORKER, runtime: str = RUNTIME, api: str = API) -> list[str]:
    """Apply the grants on conn (PostgreSQL, as the tables' owner), in its transaction: every
    privilege of the three roles in this database is revoked, then granted as the module docstring
    says. Returns the roles that exist and were granted to."""
    roles = set(conn.execute(text("SELECT rolname FROM pg_roles WHERE rolname IN (:w, :r, :a)"),
                             {"w": worker, "r": runtime, "a": api}).scalars())
    tables = set(conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
    conn.execute(text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))  # PostgreSQL 15 does; older ones do not
    done = []
    api_tables = {t: API_WRITES.get(t, "SELECT") for t in tables}
    for role, allowed in ((worker, None), (api, api_tables), (runtime, RUNTIME_TABLES)):
        if role not in roles:
            continue
        r = _q(role)
        conn.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {r}"))
        conn.execute(text(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {r}"))
        conn.execute(text(f"REVOKE CREATE ON SCHEMA public FROM {r}"))
        conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {r}"))
        for table in sorted(tables):
            if allowed is None:
                privileges = WORKER_TABLES.get(table) or (
                    "SELECT" if table in OPTUNA_READ_ONLY else "SELECT, INSERT, UPDATE, DELETE")
            else:
                privileges = allowed.get(table)
            if privileges:
                conn.execute(text(f"GRANT {privileges} ON {_q(table)} TO {r}"))
        sequences = conn.execute(text(
            "SELECT s.relname, t.relname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
            "JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace n ON n.oid = s.relnamespace "
            "WHERE n.nspname = 'public'")).all()
        for seq, table in sequences:  # the id sequences of the tables the role may insert into
            if allowed is None or "INSERT" in (allowed.get(table) or ""):
                conn.execute(text(f"GRANT USAGE, SELECT ON SEQUENCE {_q(seq)} TO {r}"))
        done.append(role)
    return done


def grant_if_owner(url: str) -> list[str]:
    """`tuner db upgrade`'s last step on PostgreSQL: the grants, when the connecting role owns the
    tables (or is a superuser); nothing on another backend or for another role."""
    from db.session import make_engine

    engine = make_engine(url)
    if engine.dialect.name != "postgresql":
        return []
    with engine.begin() as conn:
        owner = conn.execute(text("SELECT tableowner = current_user OR (SELECT rolsuper FROM pg_roles "
                                  "WHERE rolname = current_user) FROM pg_tables WHERE schemaname = 'public' "
                                  "AND tablename = 'jobs'")).scalar()
        return grant(conn) if owner else []


def writes_bests(url: str) -> str | None:
    """The PostgreSQL role url connects as when it may write best configurations, which `tuner
    serve` never needs (it should connect as API); None for a role without that right, or
    another backend."""
    from db.session import make_engine

    engine = make_engine(url)
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        role, can = conn.execute(text("SELECT current_user, has_table_privilege('best_configs', 'INSERT')")).one()
    return role if can else None
