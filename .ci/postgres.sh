#!/usr/bin/env bash
# Make PostgreSQL's server binaries (initdb, pg_ctl) available for the distributed tuning test
# (tests/test_tune_postgres.py starts its own throw-away cluster on 127.0.0.1 with them).
# Installs Debian's `postgresql` package when they are missing; the packaged cluster is not
# started or used. Prints the folder holding the binaries.
set -euo pipefail

find_bin() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
    return 0
  fi
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

if bin=$(find_bin); then
  echo "$bin"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "postgres.sh: initdb/pg_ctl not found and apt-get is unavailable; install PostgreSQL's server package" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "postgres.sh: need root (or sudo) to apt-get install postgresql" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >&2
$SUDO apt-get install -y -q --no-install-recommends postgresql >&2
# Debian's package starts a cluster of its own; the test never uses it
if command -v pg_lsclusters >/dev/null 2>&1; then
  pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
    $SUDO pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
  done
fi

if bin=$(find_bin); then
  echo "$bin"
else
  echo "postgres.sh: installed postgresql but found no initdb/pg_ctl under /usr/lib/postgresql/*/bin" >&2
  exit 1
fi
