#!/usr/bin/env bash
# A throwaway PostgreSQL for the registry tests (a registry on a real PostgreSQL, not only SQLite).
#
#   setup-postgres.sh [install]  install Debian's postgresql when initdb is missing (apt, as setup-hosts.sh)
#   setup-postgres.sh start      init a cluster in a new temp folder, start it on a free loopback port,
#                                create database "toolchain"; prints "FOLDER URI" as the last line
#   setup-postgres.sh stop DIR   stop the cluster in FOLDER and delete it
#
# The tests (tests/registry/conftest.py) run "start" once per session and "stop" at its end, so no
# server outlives them. PostgreSQL refuses to run as root: as root the cluster runs as the postgres
# user (runuser, else su) in a folder it owns. Trust authentication on 127.0.0.1 only; fsync off.
set -euo pipefail

bindir() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$found" ] && [ -x "$found/initdb" ]; then echo "$found"; return; fi
  if command -v initdb >/dev/null; then dirname "$(command -v initdb)"; return; fi
  return 1
}

as_owner() {
  if [ "$(id -u)" -ne 0 ]; then "$@"; return; fi
  if command -v runuser >/dev/null; then runuser -u postgres -- "$@"; return; fi
  su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
}

free_port() {
  "${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "${1:-install}" in
  install)
    if ! bindir >/dev/null; then
      sudo=""
      [ "$(id -u)" -ne 0 ] && sudo="sudo"
      echo "setup-postgres: installing postgresql"
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
    fi
    echo "setup-postgres: PostgreSQL binaries in $(bindir)"
    ;;
  start)
    bin=$(bindir) || { echo "setup-postgres: PostgreSQL is not installed; run scripts/setup-postgres.sh" >&2; exit 3; }
    dir=$(mktemp -d "${TOOLCHAIN_PG_TMP:-/tmp}/toolchain-pg.XXXXXX")
    chmod 755 "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; rm -rf "$dir"; exit 1; }
    for attempt in 1 2 3; do
      port=$(free_port)
      if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        >/dev/null; then
        break
      fi
      [ "$attempt" -eq 3 ] && { cat "$dir/server.log" >&2; rm -rf "$dir"; exit 1; }
    done
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres toolchain
    uri="postgresql://postgres@127.0.0.1:$port/toolchain"
    echo "$uri" >"$dir/uri"
    echo "$dir $uri"
    ;;
  stop)
    dir=${2:?usage: setup-postgres.sh stop FOLDER}
    case "$dir" in */toolchain-pg.*) ;; *) echo "setup-postgres: $dir is not a folder 'start' made" >&2; exit 2 ;; esac
    bin=$(bindir)
    if [ -f "$dir/data/postmaster.pid" ]; then
      as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null || true
    fi
    rm -rf "$dir"
    ;;
  *)
    echo "usage: setup-postgres.sh [install | start | stop FOLDER]" >&2
    exit 2
    ;;
esac
