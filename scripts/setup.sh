#!/bin/sh
# Installs what the project needs and is missing, so that a fresh clone works with `npm start` and
# `npm test`: the pinned npm dependencies (deno, supabase CLI) and, when root, the Debian packages
# for PostgreSQL 15, pgTAP, pg_prove, plpgsql_check (used by `supabase db lint`), pg_cron and Prometheus.
set -eu

cd "$(dirname "$0")/.."

# npm dependencies, from the lock file, when missing, older than the lock file, or when asked
# (FORCE_NPM_INSTALL=1, as CI does).
if [ "${FORCE_NPM_INSTALL:-0}" = "1" ] || [ ! -x node_modules/.bin/deno ] || [ ! -x node_modules/.bin/supabase ] \
  || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "[setup] installing npm dependencies from package-lock.json (npm ci)" >&2
  if ! npm ci --no-audit --no-fund --loglevel=error >&2; then
    # deno and supabase ship one binary package per platform as optional dependencies. A registry
    # that serves only some platforms (as this workplace's mirror does) leaves the others out of
    # the lock file, and npm ci then refuses it. npm install --no-save installs the same pinned
    # versions from the same lock file and leaves it untouched.
    echo "[setup] npm ci refused the lock file; installing the same pinned versions with npm install --no-save" >&2
    npm install --no-save --no-audit --no-fund --loglevel=error >&2
  fi
fi

# The web app's dependencies (web/package-lock.json: Vite, React, supabase-js, puppeteer-core), the
# same way: npm ci, or npm install --no-save where the mirror's platform binaries break npm ci.
if [ "${FORCE_NPM_INSTALL:-0}" = "1" ] || [ ! -f web/node_modules/vite/bin/vite.js ] \
  || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
  echo "[setup] installing the web app's npm dependencies (web/)" >&2
  (cd web && { npm ci --no-audit --no-fund --loglevel=error >&2 \
    || npm install --no-save --no-audit --no-fund --loglevel=error >&2; })
fi

PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_SHARE="${PG_SHARE:-/usr/share/postgresql/15}"
# postgresql-15-cron: pg_cron for the scheduled jobs; prometheus: the metrics test scrapes with a real one;
# chromium: the web app's browser tests.
PACKAGES="postgresql-15 postgresql-client-15 postgresql-15-pgtap postgresql-15-plpgsql-check libtap-parser-sourcehandler-pgtap-perl postgresql-15-cron prometheus chromium"

missing=""
[ -x "$PG_BIN/postgres" ] && [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] || missing="$missing postgresql-15"
[ -x "$PG_BIN/psql" ] || missing="$missing postgresql-client-15"
[ -f "$PG_SHARE/extension/pgtap.control" ] || missing="$missing postgresql-15-pgtap"
[ -f "$PG_SHARE/extension/plpgsql_check.control" ] || missing="$missing postgresql-15-plpgsql-check"
command -v pg_prove >/dev/null 2>&1 || missing="$missing libtap-parser-sourcehandler-pgtap-perl"
[ -f "$PG_SHARE/extension/pg_cron.control" ] || missing="$missing postgresql-15-cron"
command -v prometheus >/dev/null 2>&1 || missing="$missing prometheus"
# Headless Chromium for the web app's browser tests (puppeteer-core drives it; no browser download).
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"

if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "[setup] installing Debian packages:$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # Debian's postgresql-common would create and start a system cluster on port 5432; we only
    # want the binaries, our clusters live under .local/ and in temporary folders.
    mkdir -p /etc/postgresql-common
    if [ ! -f /etc/postgresql-common/createcluster.conf ] \
      || ! grep -q '^create_main_cluster *= *false' /etc/postgresql-common/createcluster.conf; then
      echo "create_main_cluster = false" >> /etc/postgresql-common/createcluster.conf
    fi
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $PACKAGES >&2
  else
    echo "[setup] missing Debian packages:$missing" >&2
    echo "[setup] install them as root, then run this again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y $PACKAGES" >&2
    exit 1
  fi
fi
