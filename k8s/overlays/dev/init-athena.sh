# DEV ONLY: run once by the postgres image's entrypoint on an empty data directory (sourced, as root of the
# database). Creates the application role `athena` — neither superuser nor BYPASSRLS, so row-level security
# applies to memory's queries — the database it owns, and pgvector (creating an extension needs a superuser).
# The role's password is ATHENA_DB_PASSWORD, from the Secret postgres-athena.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set=password="$ATHENA_DB_PASSWORD" <<'SQL'
CREATE ROLE athena LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD :'password';
CREATE DATABASE athena OWNER athena;
\connect athena
CREATE EXTENSION IF NOT EXISTS vector;
SQL
