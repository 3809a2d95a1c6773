#!/usr/bin/env bash
# Soak test: tollgate in front of the fake upstream at about half its measured maximum load for
# SOAK_MINUTES (default 30) with faults mixed in (bench/soak.lua: 500s, 429s, cut/reset streams,
# garbage, stalls past the first-byte timeout). Samples tollgate's RSS and open file descriptors
# every 10 s (CSV + summary), then SIGTERMs it and checks that the ledger holds exactly one row per
# request the upstream answered and a row for every request wrk completed.
# usage: bash bench/soak.sh [minutes]      (needs a Release build in ./build; SOAK_CONNS=32)
set -euo pipefail
cd "$(dirname "$0")/.."
MIN="${1:-${SOAK_MINUTES:-30}}"
CONNS="${SOAK_CONNS:-32}"
bash .ci/deps.sh bench >/dev/null
[ -x build/tollgate ] && [ -x build/tollgate-fake-upstream ] || bash .ci/build.sh >/dev/null
out_dir="${SOAK_OUT:-bench/soak-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out_dir"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

UP=18201; TG=18202; TGA=18203
taskset -c 0 ./build/tollgate-fake-upstream --listen 127.0.0.1:$UP 2>"$work/fake.log" >/dev/null & pids+=($!)
cat > "$work/soak.yaml" <<YAML
listen: 127.0.0.1:$TG
admin_listen: 127.0.0.1:$TGA
log_level: warn
upstream:
  name: fake
  url: http://127.0.0.1:$UP/v1
  api_key: soak-key
  timeouts: { connect: 2s, first_byte: 2s, idle: 2s, total: 30s }
ledger: { path: $work/ledger.db }
pricing: { file: $PWD/config/prices.yaml }
YAML
taskset -c 1 ./build/tollgate --config "$work/soak.yaml" 2>"$work/tollgate.err" & tg=$!; pids+=($tg)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$TG/healthz" >/dev/null && break; sleep 0.1; done

echo "measuring the maximum (10 s, $CONNS connections, no pacing)..."
max=$(SOAK_DELAY_MS=0 taskset -c 0 wrk -t1 -c"$CONNS" -d10s -s bench/soak.lua "http://127.0.0.1:$TG" 2>&1 | awk '/Requests\/sec/ {print $2}')
target=$(awk -v m="$max" 'BEGIN {printf "%d", m / 2}')
# wrk waits delay() ms after each response per connection: rate ~ conns / (delay + latency).
delay=$(awk -v c="$CONNS" -v t="$target" 'BEGIN {d = 1000 * c / t - 1; if (d < 1) d = 1; printf "%d", d}')
echo "max ${max} req/s -> target ~${target} req/s (delay ${delay} ms per connection) for ${MIN} min"

samples="$out_dir/rss_fd.csv"
echo "t_s,rss_kib,fds,inflight" >"$samples"
sample() {
  local rss fds
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$tg/status")
  fds=$(ls "/proc/$tg/fd" | wc -l)
  inflight=$(curl -s "http://127.0.0.1:$TGA/metrics" | awk '/^tollgate_inflight_requests / {print $2}')
  echo "$1,$rss,$fds,$inflight" >>"$samples"
}
(
  t=0
  while kill -0 "$tg" 2>/dev/null; do sample "$t"; sleep 10; t=$((t + 10)); done
) & pids+=($!)

SOAK_DELAY_MS=$delay taskset -c 0 wrk -t1 -c"$CONNS" -d"$((MIN * 60))s" --timeout 10s -s bench/soak.lua \
  "http://127.0.0.1:$TG" >"$out_dir/wrk.txt" 2>&1
cat "$out_dir/wrk.txt"
sleep 3  # the last calls finish and are ledgered
kill -TERM "$tg"; wait "$tg" 2>/dev/null || true

answered=$(grep -c '^fake upstream: ' "$work/fake.log" || true)
read -r rows attempts upstream_rows < <(sqlite3 -separator ' ' "$work/ledger.db" \
  "SELECT COUNT(*), SUM(attempts), SUM(first_byte_ms IS NOT NULL OR error_kind IN ('upstream_reset','upstream_protocol','upstream_first_byte_timeout')) FROM calls")
wrk_done=$(awk '/requests in/ {print $1}' "$out_dir/wrk.txt")
integrity=$(sqlite3 "$work/ledger.db" "PRAGMA integrity_check")
sqlite3 -header -column "$work/ledger.db" \
  "SELECT status, COALESCE(error_kind,'-') AS error_kind, aborted, usage_source, COUNT(*) AS calls FROM calls GROUP BY 1,2,3,4 ORDER BY calls DESC" \
  >"$out_dir/ledger_summary.txt"
cat "$out_dir/ledger_summary.txt"

summary() {  # column name
  awk -F, -v c="$1" 'NR == 2 {first = $c; min = $c; max = $c} NR > 1 {if ($c < min) min = $c; if ($c > max) max = $c; last = $c}
    END {printf "%s first %s, min %s, max %s, last %s\n", c == 2 ? "RSS KiB" : "open fds", first, min, max, last}' "$samples"
}
{
  echo "## Soak $(date -u +%Y-%m-%dT%H:%MZ), ${MIN} min, ~${target} req/s target ($CONNS connections, faults mixed in)"
  echo
  summary 2
  summary 3
  echo "wrk completed: $wrk_done; ledger rows: $rows; upstream requests answered (fake log): $answered; SUM(attempts): $attempts"
  echo "integrity_check: $integrity"
} | tee "$out_dir/summary.txt"
ok=1
[ "$integrity" = ok ] || ok=0
[ "$rows" -ge "$wrk_done" ] || { echo "FAIL: fewer ledger rows than completed requests"; ok=0; }
# Every request the upstream saw is one attempt of one ledgered call (a stale pooled connection
# retried on a fresh one is a second attempt of the same row).
[ "$attempts" -eq "$answered" ] || { echo "FAIL: SUM(attempts) $attempts != upstream requests $answered"; ok=0; }
[ "$ok" = 1 ] && echo "soak OK" || { echo "soak FAILED"; exit 1; }
