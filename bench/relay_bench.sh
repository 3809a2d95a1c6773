#!/usr/bin/env bash
# Relay benchmark: wrk against a fast local upstream (nginx returning canned chat JSON / SSE)
#   direct, through nginx as a reverse proxy (upstream keepalive), and through tollgate (ledger +
#   metrics on), at 16 and 64 connections. wrk and the upstream are pinned to core 0, the proxy
#   under test to core 1. Prints a markdown table: RPS, p50, p99, added p50/p99 vs direct, proxy
#   CPU per request, errors; then ledger rows vs requests completed for tollgate.
# usage: bash bench/relay_bench.sh [duration_seconds]   (needs a build in ./build)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10}"
bash .ci/deps.sh bench >/dev/null
[ -x build/tollgate ] || bash .ci/build.sh >/dev/null
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

UP=18101; NGX=18102; TG=18103; TGA=18104
chat='{"id":"chatcmpl-bench","object":"chat.completion","created":1764460800,"model":"gpt-4.1-2025-04-14","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This is a canned benchmark reply."},"finish_reason":"stop"}],"usage":{"prompt_tokens":231,"completion_tokens":9,"total_tokens":240,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}'
sse='data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4.1","choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}]}\n\ndata: {"id":"c","object":"chat.completion.chunk","model":"gpt-4.1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: {"id":"c","object":"chat.completion.chunk","model":"gpt-4.1","choices":[],"usage":{"prompt_tokens":231,"completion_tokens":2,"total_tokens":233}}\n\ndata: [DONE]\n\n'

cat > "$work/upstream.conf" <<NGX
worker_processes 1; daemon off; error_log $work/up.err warn; pid $work/up.pid;
events { worker_connections 20000; }
http { access_log off; client_body_buffer_size 64k;
  server { listen 127.0.0.1:$UP backlog=4096; keepalive_requests 1000000;
    location = /v1/chat/completions {
      if (\$request_body ~ '"stream":true') { return 599; }
      default_type application/json; return 200 '$chat'; }
    location = /v1/stream { default_type text/event-stream; return 200 '$sse'; }
  }
}
NGX
cat > "$work/proxy.conf" <<NGX
worker_processes 1; daemon off; error_log $work/px.err warn; pid $work/px.pid;
events { worker_connections 20000; }
http { access_log off;
  upstream up { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NGX backlog=4096; keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; } }
}
NGX
taskset -c 0 nginx -c "$work/upstream.conf" -p "$work" & pids+=($!)
taskset -c 1 nginx -c "$work/proxy.conf" -p "$work" & pids+=($!)
TOLLGATE_LISTEN=127.0.0.1:$TG TOLLGATE_ADMIN_LISTEN=127.0.0.1:$TGA TOLLGATE_UPSTREAM_URL=http://127.0.0.1:$UP/v1 \
TOLLGATE_UPSTREAM_API_KEY=bench TOLLGATE_LEDGER_PATH="$work/ledger.db" TOLLGATE_LOG_LEVEL=warn TOLLGATE_WORKERS=1 \
  taskset -c 1 ./build/tollgate --config config/tollgate.yaml 2>"$work/tollgate.err" & tg_pid=$!; pids+=($tg_pid)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$TG/healthz" >/dev/null && curl -sf "http://127.0.0.1:$NGX/v1/stream" >/dev/null && break; sleep 0.1; done

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
ngx_worker() { pgrep -P "$(cat "$work/px.pid")" | head -1; }
hz=$(getconf CLK_TCK)

run() {  # name url conns pid script
  local name=$1 url=$2 conns=$3 pid=$4 script=$5 t0 t1 out
  [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
  out=$(taskset -c 0 wrk -t1 -c"$conns" -d"${DUR}s" --latency -s "bench/$script" "$url" 2>&1)
  [ -n "$pid" ] && t1=$(cpu_ticks "$pid")
  local rps p50 p99 reqs errs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx|Socket errors/ {s=s $0 "; "} END {print s}' <<<"$out")
  local cpu="–"
  [ -n "$pid" ] && cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.1f µs", (b-a)/hz/n*1e6}')
  echo "$name|$conns|$rps|$p50|$p99|$cpu|${errs:-0}|$reqs"
}
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v} else {sub(/s/,"",v); print v*1000} }'; }

echo "| peer | conns | requests/s | p50 | p99 | added p50 | added p99 | proxy CPU/request | errors |"
echo "|---|---|---|---|---|---|---|---|---|"
total_tg=0
for c in 16 64; do
  d=$(run direct "http://127.0.0.1:$UP/v1/chat/completions" $c "" chat.lua)
  n=$(run "nginx proxy" "http://127.0.0.1:$NGX/v1/chat/completions" $c "$(ngx_worker)" chat.lua)
  t=$(run "tollgate" "http://127.0.0.1:$TG/v1/chat/completions" $c $tg_pid chat.lua)
  d50=$(to_ms "$(cut -d'|' -f4 <<<"$d")"); d99=$(to_ms "$(cut -d'|' -f5 <<<"$d")")
  for line in "$d" "$n" "$t"; do
    IFS='|' read -r name conns rps p50 p99 cpu errs reqs <<<"$line"
    a50=$(awk -v x="$(to_ms "$p50")" -v y="$d50" 'BEGIN {printf "%+.3f ms", x-y}')
    a99=$(awk -v x="$(to_ms "$p99")" -v y="$d99" 'BEGIN {printf "%+.3f ms", x-y}')
    [ "$name" = direct ] && { a50="–"; a99="–"; }
    echo "| $name | $conns | $rps | $p50 | $p99 | $a50 | $a99 | $cpu | $errs |"
    [ "$name" = tollgate ] && total_tg=$((total_tg + reqs))
  done
done
# Streaming: canned SSE through each peer (tollgate meters it; the client did not ask for usage).
for c in 16; do
  for peer in "direct|http://127.0.0.1:$UP/v1/stream|" "nginx proxy|http://127.0.0.1:$NGX/v1/stream|$(ngx_worker)" "tollgate|http://127.0.0.1:$TG/v1/stream|$tg_pid"; do
    IFS='|' read -r name url pid <<<"$peer"
    IFS='|' read -r name conns rps p50 p99 cpu errs reqs <<<"$(run "$name (SSE)" "$url" $c "$pid" chat_stream.lua)"
    echo "| $name | $conns | $rps | $p50 | $p99 | | | $cpu | $errs |"
    [[ "$name" == tollgate* ]] && total_tg=$((total_tg + reqs))
  done
done
sleep 0.5
kill -TERM "$tg_pid"; wait "$tg_pid" 2>/dev/null || true
rows=$(sqlite3 "$work/ledger.db" 'SELECT COUNT(*) FROM calls')
echo
echo "tollgate ledger rows: $rows; requests completed by wrk through tollgate: $total_tg (wrk may count a few in-flight at its stop differently)"
