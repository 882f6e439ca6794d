#!/usr/bin/env bash
# tenantctl end to end: a throwaway local PostgreSQL (unless DATABASE_URL is set), 200 tenants
# created at V4, a "deploy" that ships V5..V8 applied with `migrate --all` (with progress),
# then `status`. With DATABASE_URL set it uses that database, in its own control schema
# (tenantctl_demo) and schema prefix (demo_), so it never touches real tenants.
#   DEMO_TENANTS=1000 scripts/demo.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tenants=${DEMO_TENANTS:-200}
profile=${DEMO_PROFILE:-release}

echo "==> building tenantctl ($profile)"
if [ "$profile" = release ]; then
  echo "    (the first build compiles about 225 crates: 2 to 3 minutes on 2 cores once downloaded; later ones take seconds)"
  cargo build --release --manifest-path "$root/Cargo.toml"
  bin="$root/target/release/tenantctl"
else
  cargo build --manifest-path "$root/Cargo.toml"
  bin="$root/target/debug/tenantctl"
fi

work=$(mktemp -d /tmp/tenantctl-demo.XXXXXX)
pg_dir=""
cleanup() {
  [ -n "$pg_dir" ] && "$root/scripts/throwaway-pg.sh" stop "$pg_dir"
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${DATABASE_URL:-}" ]; then
  echo "==> DATABASE_URL is not set: starting a throwaway PostgreSQL"
  read -r pg_dir DATABASE_URL < <("$root/scripts/throwaway-pg.sh" start)
  export DATABASE_URL
fi

mkdir "$work/migrations"
cat >"$work/tenants.toml" <<TOML
[database]
url = "\${DATABASE_URL}"
control_schema = "tenantctl_demo"
[migrations]
dir = "migrations"
[tenants]
schema_prefix = "demo_"
[run]
jobs = 4
TOML
cp "$root"/migrations/V[1-4]__*.sql "$work/migrations/"
for i in $(seq 1 "$tenants"); do printf 'customer_%05d\n' "$i"; done >"$work/ids.txt"

cd "$work"
echo "==> tenantctl tenant create --from-file ids.txt --if-not-exists   ($tenants tenants at V4)"
"$bin" tenant create --from-file ids.txt --if-not-exists --quiet
echo
echo "==> a deploy ships V5..V8; tenantctl migrate --all"
cp "$root"/migrations/V[5-8]__*.sql "$work/migrations/"
"$bin" migrate --all
echo
echo "==> tenantctl status"
"$bin" status
