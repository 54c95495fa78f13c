#!/bin/sh
# Run once by the postgres image when it creates the database (/docker-entrypoint-initdb.d/): the
# least-privilege roles of db/roles.py. The migrate service (`tuner db upgrade`, as the owner)
# grants them their rights after every migration. Passwords come from the environment, passed to
# psql as variables (quoted by psql, never pasted into the SQL).
set -eu
if [ -n "${TUNER_RUNTIME_DB_PASSWORD:-}" ]; then runtime_login="LOGIN PASSWORD :'runtime_pw'"; else runtime_login="NOLOGIN"; fi
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v worker_pw="$TUNER_WORKER_DB_PASSWORD" -v api_pw="$TUNER_API_DB_PASSWORD" \
     -v runtime_pw="${TUNER_RUNTIME_DB_PASSWORD:-}" <<SQL
CREATE ROLE tuner_worker LOGIN PASSWORD :'worker_pw';
CREATE ROLE tuner_api LOGIN PASSWORD :'api_pw';
CREATE ROLE tuner_runtime $runtime_login;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
