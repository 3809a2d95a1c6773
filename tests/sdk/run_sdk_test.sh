#!/usr/bin/env bash
# Runs the official OpenAI Node SDK test (openai_sdk_test.mjs) against the fake upstream, or
# through tollgate in front of it when a tollgate binary is given.
# usage: tests/sdk/run_sdk_test.sh FAKE_UPSTREAM_BIN [TOLLGATE_BIN]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fake_bin="${1:?usage: $0 FAKE_UPSTREAM_BIN [TOLLGATE_BIN]}"
tollgate_bin="${2:-}"
workdir="$(mktemp -d)"
pids=()

cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$workdir"
}
trap cleanup EXIT

# wait_for_url LOG PID: waits (up to 10 s) until LOG shows "... listening on URL"; prints URL.
wait_for_url() {
  local log="$1" pid="$2" url
  for _ in $(seq 100); do
    url="$(sed -n 's/.*listening on \(https\?:\/\/[^ ]*\).*/\1/p' "$log" | head -n 1)"
    if [[ -n "$url" ]]; then echo "$url"; return 0; fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# Sets upstream_url to the fake upstream's base URL (…/v1), on a free port.
start_fake_upstream() {
  "$fake_bin" --listen 127.0.0.1:0 --quiet >"$workdir/fake.out" 2>"$workdir/fake.err" &
  pids+=("$!")
  if ! upstream_url="$(wait_for_url "$workdir/fake.out" "$!")"; then
    echo "run_sdk_test.sh: the fake upstream did not start:" >&2
    cat "$workdir/fake.err" >&2
    return 1
  fi
}

# Starts tollgate on free loopback ports (client and admin) in front of "$upstream_url", with the
# shipped config/tollgate.yaml and a ledger in $workdir; sets base_url and admin_url.
start_tollgate() {
  TOLLGATE_LISTEN=127.0.0.1:0 TOLLGATE_ADMIN_LISTEN=127.0.0.1:0 TOLLGATE_UPSTREAM_URL="$upstream_url" \
  TOLLGATE_UPSTREAM_API_KEY=sk-upstream-test TOLLGATE_LEDGER_PATH="$workdir/ledger.db" \
    "$tollgate_bin" --config "$here/../../config/tollgate.yaml" 2>"$workdir/tollgate.err" &
  tollgate_pid=$!
  pids+=("$tollgate_pid")
  local port admin
  for _ in $(seq 100); do
    port="$(grep -o '"listen":"127.0.0.1:[0-9]*"' "$workdir/tollgate.err" | head -n 1 | grep -o '[0-9]*"$' | tr -d '"' || true)"
    admin="$(grep -o '"admin_listen":"127.0.0.1:[0-9]*"' "$workdir/tollgate.err" | head -n 1 | grep -o '[0-9]*"$' | tr -d '"' || true)"
    if [[ -n "$port" && -n "$admin" ]]; then
      base_url="http://127.0.0.1:$port/v1"
      admin_url="http://127.0.0.1:$admin"
      return 0
    fi
    kill -0 "$tollgate_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "run_sdk_test.sh: tollgate did not start:" >&2
  cat "$workdir/tollgate.err" >&2
  return 1
}

if [[ ! -d "$here/node_modules/openai" ]]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

start_fake_upstream
base_url="$upstream_url"
if [[ -n "$tollgate_bin" ]]; then
  start_tollgate
fi

echo "run_sdk_test.sh: OpenAI SDK against $base_url"
cd "$here"
OPENAI_BASE_URL="$base_url" OPENAI_API_KEY="${OPENAI_API_KEY:-sk-tollgate-sdk-test}" node --test openai_sdk_test.mjs

if [[ -n "$tollgate_bin" ]]; then
  # The metrics must pass promtool, and every SDK call must be in the ledger after a clean stop.
  if command -v promtool >/dev/null; then
    curl -sf "$admin_url/metrics" | promtool check metrics
    echo "run_sdk_test.sh: promtool check metrics OK"
  fi
  kill -TERM "$tollgate_pid"
  wait "$tollgate_pid"
  rows="$(sqlite3 "$workdir/ledger.db" 'SELECT COUNT(*) FROM calls')"
  upstream_calls="$(sqlite3 "$workdir/ledger.db" "SELECT COUNT(*) FROM calls WHERE usage_source = 'upstream'")"
  echo "run_sdk_test.sh: ledger rows after SIGTERM: $rows ($upstream_calls with upstream usage)"
  if (( rows < 10 )); then
    echo "run_sdk_test.sh: expected every SDK call in the ledger" >&2
    exit 1
  fi
fi
