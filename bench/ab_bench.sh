#!/usr/bin/env bash
# ab_bench.sh: two tollgate binaries paired on short chat calls, alternating, so a slow spell of
# the VM hits both alike (relay_bench.sh runs one binary against nginx; its rounds can differ by
# 20 % from one minute to the next). The relay_bench set-up without the other peers: nginx with a
# canned completion on core 0, wrk (16 connections, bench/chat.lua) on core 0, tollgate (one
# worker, a new ledger each run) on core 1. Prints requests/s and the proxy's CPU per call for
# every run, then each binary's mean.
#
# usage: bash bench/ab_bench.sh BIN_A BIN_B [pairs (4)] [seconds per run (8)]
#   Each binary runs with the config/tollgate.yaml of its own tree (BIN/../../config): an older
#   binary may not know a newer config's keys.
#   e.g. bash bench/ab_bench.sh /tmp/old/build/tollgate build/tollgate
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,13p "$0"; exit 2; }
A=$(readlink -f "$1"); B=$(readlink -f "$2"); PAIRS=${3:-4}; DUR=${4:-8}
UP=18401; TG=18403; TGA=18404
bash .ci/deps.sh bench >/dev/null
. bench/bench_lib.sh   # $work, $pids and their cleanup; $chat, the canned reply
chmod 711 "$work"
cat > "$work/up.conf" <<NGX
worker_processes 1; daemon off; error_log $work/up.err warn; pid $work/up.pid;
events { worker_connections 4096; }
http { access_log off; client_body_buffer_size 64k;
  server { listen 127.0.0.1:$UP backlog=4096; keepalive_requests 1000000;
    location = /v1/chat/completions { default_type application/json; return 200 '$chat'; } } }
NGX
taskset -c 0 nginx -c "$work/up.conf" -p "$work" & pids+=($!)
hz=$(getconf CLK_TCK)

run() {  # label binary: one warmed-up run; prints "label requests/s µs/call"
  local label=$1 bin=$2 p t0 t1 out n
  rm -f "$work"/ledger.db*
  TOLLGATE_LISTEN=127.0.0.1:$TG TOLLGATE_ADMIN_LISTEN=127.0.0.1:$TGA TOLLGATE_UPSTREAM_URL=http://127.0.0.1:$UP/v1 \
    TOLLGATE_UPSTREAM_API_KEY=bench TOLLGATE_LEDGER_PATH="$work/ledger.db" TOLLGATE_LOG_LEVEL=warn TOLLGATE_WORKERS=1 \
    taskset -c 1 "$bin" --config "$(dirname "$(dirname "$bin")")/config/tollgate.yaml" 2>"$work/tg.err" &
  p=$!; pids+=("$p")
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$TG/" && break; sleep 0.1; done
  curl -s -o /dev/null "http://127.0.0.1:$TG/" || { echo "ab_bench: $bin did not start:" >&2; cat "$work/tg.err" >&2; exit 1; }
  taskset -c 0 wrk -t1 -c16 -d3s -s bench/chat.lua "http://127.0.0.1:$TG/v1/chat/completions" >/dev/null 2>&1
  t0=$(awk '{print $14+$15}' "/proc/$p/stat")
  out=$(taskset -c 0 wrk -t1 -c16 -d"${DUR}s" -s bench/chat.lua "http://127.0.0.1:$TG/v1/chat/completions" 2>&1)
  t1=$(awk '{print $14+$15}' "/proc/$p/stat")
  n=$(echo "$out" | awk '/^REQUESTS/ {print $2}')
  kill -TERM "$p"; wait "$p" 2>/dev/null || true
  awk -v l="$label" -v n="$n" -v d="$DUR" -v t="$((t1 - t0))" -v hz="$hz" \
    'BEGIN {printf "%s %.0f %.2f\n", l, n / d, t / hz * 1e6 / n}'
}

echo "| run | binary | requests/s | proxy CPU µs/call |"
echo "|---|---|---|---|"
results=()
for i in $(seq "$PAIRS"); do
  for side in A B; do
    bin=$A; [ "$side" = B ] && bin=$B
    r=$(run "$side" "$bin"); results+=("$r")
    read -r _ rps us <<<"$r"
    echo "| $i | $side | $rps | $us |"
  done
done
printf '%s\n' "${results[@]}" | awk '{n[$1]++; r[$1]+=$2; c[$1]+=$3}
  END {for (s in n) printf "mean %s: %.0f requests/s, %.2f µs/call over %d runs\n", s, r[s]/n[s], c[s]/n[s], n[s]}' | sort
echo "A = $A"
echo "B = $B"
