#!/usr/bin/env bash
# Import benchmark: generates a file of LINES six-field subjects (CSV), starts a fresh
# vault on each store once (so the data directory records it), then times
# `piivault import` of the whole file and prints its summary line.
#
#   benches/import/run.sh                         # 1,000,000 lines, SQLite and PostgreSQL
#   LINES=100000 STORES=sqlite benches/import/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
LINES=${LINES:-1000000}
STORES=${STORES:-"sqlite postgres"}
PG_BASE=${PIIVAULT_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
export PGOPTIONS="--client-min-messages=warning"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --locked -q
BIN=${PIIVAULT_BENCH_BIN:-$PWD/target/release/piivault}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 benches/import/gen.py csv "$LINES" "$work/subjects.csv"
echo "$LINES lines, $(du -h "$work/subjects.csv" | cut -f1)"
for store in $STORES; do
  dir="$work/$store"
  args=(--data-dir "$dir")
  if [ "$store" = postgres ]; then
    pgdb="piivault_import_bench_$$"
    psql "$PG_BASE" -qc "DROP DATABASE IF EXISTS $pgdb WITH (FORCE)" -qc "CREATE DATABASE $pgdb" >/dev/null
    args+=(--database-url "${PG_BASE%/*}/$pgdb")
  fi
  # First start: initialises the vault and records its store; stopped once listening.
  "$BIN" serve "${args[@]}" --listen 127.0.0.1:0 >"$work/$store-serve.out" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do grep -q 'listening on' "$work/$store-serve.out" && break; sleep 0.2; done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$work/subjects.csv.piivault-import"
  printf '%s: ' "$store"
  "$BIN" import "$work/subjects.csv" --data-dir "$dir" --map-out "$work/map.csv" 2>&1 | grep '^imported' || true
  [ "$store" = postgres ] && psql "$PG_BASE" -qc "DROP DATABASE IF EXISTS $pgdb WITH (FORCE)" >/dev/null
done
