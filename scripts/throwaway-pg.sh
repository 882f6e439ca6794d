#!/usr/bin/env bash
# Starts or stops a throwaway PostgreSQL cluster (trust auth, 127.0.0.1, a free port).
#   scripts/throwaway-pg.sh start        prints: DIR URL
#   scripts/throwaway-pg.sh stop DIR     stops it and deletes DIR
# Server binaries: $TENANTCTL_PG_BIN, else initdb on PATH, else the newest
# /usr/lib/postgresql/<ver>/bin. As root, the server runs as the `postgres` OS user.
# Extra server options: TENANTCTL_PG_EXTRA (e.g. "-c shared_preload_libraries=pg_stat_statements").
set -euo pipefail

pg_bin() {
  if [ -n "${TENANTCTL_PG_BIN:-}" ]; then echo "$TENANTCTL_PG_BIN"; return; fi
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$d" ]; then
    echo "PostgreSQL server binaries not found: install the postgresql package (initdb, postgres) or set TENANTCTL_PG_BIN" >&2
    exit 1
  fi
  echo "$d"
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
  start)
    bin=$(pg_bin)
    dir=$(mktemp -d /tmp/tenantctl-pg.XXXXXX)
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    for _ in 1 2 3 4 5 6 7 8; do
      port=$((20000 + RANDOM % 30000))
      if as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
          -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=256MB -c max_locks_per_transaction=256 ${TENANTCTL_PG_EXTRA:-}" \
          start >/dev/null 2>&1; then
        echo "$dir postgres://postgres@127.0.0.1:$port/postgres"
        exit 0
      fi
    done
    cat "$dir/server.log" >&2
    exit 1
    ;;
  stop)
    dir=${2:?usage: throwaway-pg.sh stop DIR}
    bin=$(pg_bin)
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  *)
    echo "usage: $0 start | stop DIR" >&2
    exit 2
    ;;
esac
