#!/usr/bin/env bash
# Load benchmark: builds the release binary, and for each store seeds a fresh vault,
# starts the server and drives it with wrk over HTTPS. Prints requests/s, p50 and p99
# and the ratio to /healthz of the same run, at each connection count.
#
#   benches/load/run.sh                      # both stores, 1/16/64 connections, 5 s each
#   STORES=sqlite CONNS="64" DURATION=10 benches/load/run.sh
#   PERF=read1 STORES=sqlite CONNS=64 benches/load/run.sh   # also perf-records the server
#       during that workload into perf-<store>-<workload>-<conns>.data (or $PERF_OUT);
#       PERF_GRAPH="--call-graph dwarf" for call graphs through C code without frame pointers
#   REPEAT=3 STORES=sqlite CONNS=64 WORKLOADS="healthz read1" benches/load/run.sh   # each
#       workload three times, each time right after a /healthz run of its own (its ratio's
#       base); a line per repeat, then the repeat of median throughput
#   FILL=1000000 SUBJECT_CACHE=0 WORKLOADS=read1 benches/load/run.sh   # scale: 1M subjects,
#       every read from the store (filler rows grow the tables; see fill.py)
#
# Needs wrk (Debian package) and, for PostgreSQL, PIIVAULT_BENCH_DATABASE_URL or the
# local server at postgres://postgres@127.0.0.1:5432/test. Load generator and server
# share this machine's cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
STORES=${STORES:-"sqlite postgres"}
CONNS=${CONNS:-"1 16 64"}
DURATION=${DURATION:-5}
SUBJECTS=${SUBJECTS:-2000}
WORKLOADS=${WORKLOADS:-"healthz read1 read6 create lookup correct"}
FILL=${FILL:-0}
REPEAT=${REPEAT:-1}
export PGOPTIONS="--client-min-messages=warning"
PG_BASE=${PIIVAULT_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --locked -q
BIN=${PIIVAULT_BENCH_BIN:-$PWD/target/release/piivault}
export PIIVAULT_BENCH_DIR=$PWD/benches/load

declare -A LABEL=([healthz]="/healthz" [read1]="audited read, 1 field" [read6]="audited read, 6 fields"
  [create]="create, 6 fields" [lookup]="lookup by ID number" [correct]="correction, 1 field")

run_store() {
  local store=$1 dir url pgdb="" port pid
  dir=$(mktemp -d)
  if [ "$store" = postgres ]; then
    pgdb="piivault_bench_$$"
    psql "$PG_BASE" -qc "DROP DATABASE IF EXISTS $pgdb WITH (FORCE)" -qc "CREATE DATABASE $pgdb" >/dev/null
    url="${PG_BASE%/*}/$pgdb"
  else
    url="sqlite://$dir/piivault.db?mode=rwc"
  fi
  local args=(--data-dir "$dir" --database-url "$url")
  if [ -n "${SUBJECT_CACHE:-}" ]; then
    echo "subject_cache_entries = $SUBJECT_CACHE" >"$dir/bench.toml"
    args+=(--config "$dir/bench.toml")
  fi
  "$BIN" serve "${args[@]}" --listen 127.0.0.1:0 >"$dir/stdout.log" 2>"$dir/server.log" &
  pid=$!
  for _ in $(seq 1 100); do
    port=$(grep -o 'listening on https://127.0.0.1:[0-9]*' "$dir/server.log" 2>/dev/null | grep -o '[0-9]*$' || true)
    [ -n "$port" ] && break
    sleep 0.2
  done
  [ -n "$port" ] || { echo "server did not start:" >&2; cat "$dir/server.log" >&2; exit 1; }
  local base="https://127.0.0.1:$port"
  if [ "$FILL" -gt 0 ]; then
    local t0=$SECONDS
    if [ "$store" = postgres ]; then
      python3 benches/load/fill.py postgres "$url" "$FILL"
    else
      python3 benches/load/fill.py sqlite "$dir/piivault.db" "$FILL"
    fi
    # Let the disk settle: the fill leaves gigabytes to write back, which would
    # otherwise slow every commit's fsync during the measurement.
    [ "$store" = postgres ] && psql "$url" -qc "CHECKPOINT" >/dev/null
    sync
    echo "filled $FILL filler subjects in $((SECONDS - t0)) s"
  fi
  export PIIVAULT_BENCH_DSR_TOKEN PIIVAULT_BENCH_CS_TOKEN PIIVAULT_BENCH_IDS=$dir/ids.txt
  PIIVAULT_BENCH_DSR_TOKEN=$("$BIN" token issue "${args[@]}" --role dsr_handler --purpose dsr --ttl 1h 2>/dev/null)
  PIIVAULT_BENCH_CS_TOKEN=$("$BIN" token issue "${args[@]}" --role customer_service --purpose service --ttl 1h 2>/dev/null)
  local before after
  before=$(store_bytes "$store" "$dir" "$pgdb")
  python3 benches/load/seed.py "$base" "$dir/tls/ca.pem" "$PIIVAULT_BENCH_DSR_TOKEN" "$SUBJECTS" "$dir/ids.txt"
  after=$(store_bytes "$store" "$dir" "$pgdb")
  echo "store size per subject created over HTTP (data, index entries, key, audit events): $(( (after - before) / SUBJECTS )) bytes"
  local health=""
  printf '\n%s (%s subjects seeded, %s filler, subject cache %s, %ss per run, wrk -t2)\n' \
    "$store" "$SUBJECTS" "$FILL" "${SUBJECT_CACHE:-default}" "$DURATION"
  printf '%-24s %5s %10s %9s %9s %8s %7s %9s %9s %8s\n' workload conns req/s p50_ms p99_ms errors ratio ev/commit commit_ms cpu_us
  for c in $CONNS; do
    for w in $WORKLOADS; do
      # Each repeat: /healthz, then the workload right after it (so the ratio compares
      # two runs a few seconds apart, on a machine whose speed drifts), one line per
      # repeat. The summary line takes the repeat of median throughput.
      local runs=() rep
      for rep in $(seq 1 "$REPEAT"); do
        if [ "$w" != healthz ]; then
          measure healthz "$c" "$pid" "$base" "$store"
          health=$M_RPS
        fi
        measure "$w" "$c" "$pid" "$base" "$store"
        [ "$w" = healthz ] && health=$M_RPS
        runs+=("$M_RPS|$(row "$w" "$c" "$health")")
        [ "$REPEAT" -gt 1 ] && printf '  %s\n' "${runs[-1]#*|}"
      done
      local median
      median=$(printf '%s\n' "${runs[@]}" | sort -t'|' -k1,1g | sed -n "$(( (REPEAT + 1) / 2 ))p")
      printf '%s\n' "${median#*|}"
    done
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf 'server log: %s lines, %s bytes; database: %s\n' "$(wc -l <"$dir/server.log")" "$(wc -c <"$dir/server.log")" \
    "$( [ "$store" = sqlite ] && du -sh "$dir/piivault.db" | cut -f1 || psql "$PG_BASE" -qAtc "SELECT pg_size_pretty(pg_database_size('$pgdb'))")"
  [ -n "$pgdb" ] && psql "$PG_BASE" -qc "DROP DATABASE IF EXISTS $pgdb WITH (FORCE)" >/dev/null
  rm -rf "$dir"
}

# Bytes the store takes now (SQLite: the database file once the WAL is copied back into
# it, since the WAL file is reused rather than shrunk; PostgreSQL: the database).
store_bytes() {
  if [ "$1" = postgres ]; then
    psql "$PG_BASE" -qAtc "SELECT pg_database_size('$3')"
  else
    python3 -c "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('PRAGMA wal_checkpoint(PASSIVE)').fetchall()" "$2/piivault.db" 2>/dev/null || true
    wc -c <"$2"/piivault.db
  fi
}

# The audit writer's totals from /metrics: commits, events, seconds spent committing.
audit_sums() {
  curl -sk "$1/metrics" | awk '
    /^piivault_audit_batch_events_count/ { c = $2 } /^piivault_audit_batch_events_sum/ { e = $2 }
    /^piivault_audit_commit_duration_seconds_sum/ { t = $2 } END { printf "%d %d %f", c, e, t }'
}

# The server's CPU time so far (user + system), in clock ticks: with the requests served,
# the server's CPU cost per request, which the load generator sharing the cores does not blur.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# wrk prints 1.23ms, 456.00us or 1.20s: in milliseconds.
ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'; }

# measure WORKLOAD CONNS PID BASE STORE: one wrk run; sets M_RPS M_P50 M_P99 M_ERRS M_AUDIT M_CPU.
measure() {
  local w=$1 c=$2 pid=$3 base=$4 store=$5
  local threads=2; [ "$c" -lt 2 ] && threads=1
  local out perf_pid="" m0 m1 cpu0 cpu1 reqs
  m0=$(audit_sums "$base")
  cpu0=$(cpu_ticks "$pid")
  if [ "${PERF:-}" = "$w" ]; then
    # Profile the server while this workload runs (perf, call graphs by frame pointer).
    perf record -q -F 499 ${PERF_GRAPH:--g} -p "$pid" -o "${PERF_OUT:-perf-$store-$w-$c.data}" -- sleep "$DURATION" 2>/dev/null &
    perf_pid=$!
  fi
  out=$(wrk -t$threads -c"$c" -d"${DURATION}s" --latency -s "benches/load/$w.lua" "$base")
  cpu1=$(cpu_ticks "$pid")
  [ -n "$perf_pid" ] && wait "$perf_pid"
  m1=$(audit_sums "$base")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  M_RPS=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  M_P50=$(awk '$1=="50%" {print $2}' <<<"$out")
  M_P99=$(awk '$1=="99%" {print $2}' <<<"$out")
  M_ERRS=$( (grep -o 'Non-2xx or 3xx responses: [0-9]*' <<<"$out" || echo "x 0") | awk '{print $NF}')
  M_AUDIT=$(awk -v a="$m0" -v b="$m1" 'BEGIN { split(a, x, " "); split(b, y, " "); n = y[1] - x[1];
    if (n > 0) printf "%.1f %.2f", (y[2] - x[2]) / n, 1000 * (y[3] - x[3]) / n; else print "- -" }')
  M_CPU=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN { if (n > 0) printf "%.0f", 1e6 * (b - a) / hz / n; else print "-" }')
}

# row WORKLOAD CONNS HEALTHZ_RPS: the table line for the last measure.
row() {
  printf '%-24s %5s %10.0f %9s %9s %8s %7s %9s %9s %8s' "${LABEL[$1]}" "$2" "$M_RPS" "$(ms "$M_P50")" "$(ms "$M_P99")" "$M_ERRS" \
    "$(awk -v a="$M_RPS" -v b="$3" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b; else print "-" }')" \
    $M_AUDIT "$M_CPU"
}

for s in $STORES; do run_store "$s"; done
