#!/usr/bin/env bash
# Rotation benchmark: imports SUBJECTS six-field subjects into a fresh vault on each
# store, starts the server, and measures audited single-field reads (wrk, CONNS
# connections) first alone, then while `piivault keys rotate ROTATE` runs beside it.
# Prints the rotation's own time and rate and the reads' requests/s, p50 and p99 for
# each phase.
#
#   benches/rotation/run.sh                                   # --data, 200,000 subjects
#   ROTATE="--data --batch 100 --max-rate 2000" STORES=postgres benches/rotation/run.sh
#   ROTATE="--master" SUBJECTS=100000 benches/rotation/run.sh
#   VIA=http ROTATE='{"kind":"data","batch":20,"max_rate":2000}' benches/rotation/run.sh
#       # the rotation runs inside the server (POST /v1/keys/rotations), not beside it
#
# Needs wrk. The load generator, the server, the rotation and PostgreSQL share this
# machine's cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
SUBJECTS=${SUBJECTS:-200000}
STORES=${STORES:-"sqlite postgres"}
CONNS=${CONNS:-16}
BASELINE=${BASELINE:-8}
ROTATE=${ROTATE:---data}
PG_BASE=${PIIVAULT_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
export PGOPTIONS="--client-min-messages=warning"
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --locked -q
BIN=${PIIVAULT_BENCH_BIN:-$PWD/target/release/piivault}
export PIIVAULT_BENCH_DIR=$PWD/benches/load
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 benches/import/gen.py csv "$SUBJECTS" "$work/subjects.csv"

wrk_line() {
  awk '/^Requests\/sec/ {r = $2} $1 == "50%" {p50 = $2} $1 == "99%" {p99 = $2}
       /Non-2xx/ {e = $NF} END {printf "%8.0f req/s  p50 %8s  p99 %8s  non-2xx %s\n", r, p50, p99, e + 0}'
}

for store in $STORES; do
  dir="$work/$store"
  args=(--data-dir "$dir")
  pgdb=""
  if [ "$store" = postgres ]; then
    pgdb="piivault_rotation_bench_$$"
    psql "$PG_BASE" -qc "DROP DATABASE IF EXISTS $pgdb WITH (FORCE)" -qc "CREATE DATABASE $pgdb" >/dev/null
    args+=(--database-url "${PG_BASE%/*}/$pgdb")
  fi
  "$BIN" serve "${args[@]}" --listen 127.0.0.1:0 >"$work/$store-init.out" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do grep -q 'listening on' "$work/$store-init.out" && break; sleep 0.2; done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$work/subjects.csv.piivault-import"
  "$BIN" import "$work/subjects.csv" "${args[@]}" --map-out "$work/map.csv" 2>&1 | grep '^imported' || true
  cut -d, -f2 "$work/map.csv" | grep '^sub_' >"$work/ids.txt"
  [ "$store" = postgres ] && psql "${PG_BASE%/*}/$pgdb" -qc "VACUUM ANALYZE" >/dev/null
  "$BIN" serve "${args[@]}" --listen 127.0.0.1:0 >"$work/$store-serve.out" 2>"$work/$store-server.log" &
  pid=$!
  port=""
  for _ in $(seq 1 100); do
    port=$(grep -o 'listening on https://127.0.0.1:[0-9]*' "$work/$store-serve.out" "$work/$store-server.log" 2>/dev/null | grep -o '[0-9]*$' | head -1 || true)
    [ -n "$port" ] && break
    sleep 0.2
  done
  base="https://127.0.0.1:$port"
  export PIIVAULT_BENCH_CS_TOKEN PIIVAULT_BENCH_IDS=$work/ids.txt
  PIIVAULT_BENCH_CS_TOKEN=$("$BIN" token issue "${args[@]}" --role customer_service --purpose service --ttl 1h 2>/dev/null)
  wrk -t1 -c4 -d2s -s benches/load/read1.lua "$base" >/dev/null # warm up
  printf '\n%s, %s subjects, reads at %s connections\n' "$store" "$SUBJECTS" "$CONNS"
  printf '  reads alone (%ss):                 ' "$BASELINE"
  wrk -t1 -c"$CONNS" -d"${BASELINE}s" --latency -s benches/load/read1.lua "$base" | wrk_line
  # Reads for as long as the rotation runs (wrk needs a duration: long enough, then
  # stopped when the rotation ends).
  wrk -t1 -c"$CONNS" -d600s --latency -s benches/load/read1.lua "$base" >"$work/during.txt" &
  wrk_pid=$!
  sleep 1
  t0=$(date +%s.%N)
  if [ "${VIA:-cli}" = http ]; then
    admin=$("$BIN" token issue "${args[@]}" --role admin --purpose admin --ttl 1h 2>/dev/null)
    auth=(-sk -H "Authorization: Bearer $admin" -H "X-Purpose: admin" -H "Content-Type: application/json")
    curl "${auth[@]}" -X POST -d "$ROTATE" "$base/v1/keys/rotations" >"$work/started.json"
    grep -q '"started":true' "$work/started.json" || { cat "$work/started.json"; exit 1; }
    # Done once the server's log says so.
    until grep -q 'rotation finished\|rotation stopped' "$work/$store-server.log"; do sleep 0.2; done
    grep -o 'report=.*' "$work/$store-server.log" | tail -1 | cut -d= -f2- >"$work/rotate.json"
  else
    # shellcheck disable=SC2086
    "$BIN" keys rotate $ROTATE --json "${args[@]}" >"$work/rotate.json" 2>"$work/rotate.err" || { cat "$work/rotate.err"; exit 1; }
  fi
  t1=$(date +%s.%N)
  kill -INT "$wrk_pid"; wait "$wrk_pid" 2>/dev/null || true
  printf '  reads during keys rotate %s: ' "$ROTATE"
  wrk_line <"$work/during.txt"
  python3 - "$work/rotate.json" "$t0" "$t1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
secs = float(sys.argv[3]) - float(sys.argv[2])
n = r.get("items", r.get("subject_keys", 0))
what = "items (values and records)" if "items" in r else "keys"
print(f"  rotation: {secs:.1f} s, {n} {what}, {n / secs:,.0f} {what.split()[0]}/s; report {json.dumps(r)}")
EOF
  kill "$pid"; wait "$pid" 2>/dev/null || true
  [ -n "$pgdb" ] && psql "$PG_BASE" -qc "DROP DATABASE IF EXISTS $pgdb WITH (FORCE)" >/dev/null
done
