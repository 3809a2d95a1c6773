#!/usr/bin/env bash
# Runs an official Node SDK test against the fake upstream, or through tollgate in front of it
# when a tollgate binary is given: openai_sdk_test.mjs (the default), or with --sdk anthropic
# anthropic_sdk_test.mjs once per Anthropic SDK generation (0.x and 1.x, see package.json).
# usage: tests/sdk/run_sdk_test.sh [--sdk openai|anthropic] FAKE_UPSTREAM_BIN [TOLLGATE_BIN]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage="usage: $0 [--sdk openai|anthropic] FAKE_UPSTREAM_BIN [TOLLGATE_BIN]"
sdk=openai
if [[ "${1:-}" == --sdk ]]; then
  sdk="${2:?$usage}"
  shift 2
fi
[[ "$sdk" == openai || "$sdk" == anthropic ]] || { echo "$usage" >&2; exit 2; }
fake_bin="${1:?$usage}"
tollgate_bin="${2:-}"
upstream_key=sk-upstream-test
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
  TOLLGATE_UPSTREAM_API_KEY="$upstream_key" TOLLGATE_LEDGER_PATH="$workdir/ledger.db" \
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

# check_anthropic_ledger EXPECT_FILE: every metered Anthropic SDK call (one JSON line each in
# EXPECT_FILE, with the usage the SDK saw) has its ledger row, counted the OpenAI way (prompt =
# input + cache read + cache write, cached = cache read) and priced as claude-sonnet-4.5
# (config/prices.yaml, USD per MTok: input 3.00, cache read 0.30, 5-minute write 3.75, 1-hour
# write 6.00, output 15.00; over 200k prompt tokens 6.00 / 0.60 / 7.50 / 12.00 / 22.50).
check_anthropic_ledger() {
  local expect="$1" checked bad
  checked="$(sqlite3 "$workdir/ledger.db" "SELECT COUNT(*) FROM json_each(CAST(readfile('$expect') AS TEXT))")"
  bad="$(sqlite3 -separator ' ' "$workdir/ledger.db" <<SQL
CREATE TEMP VIEW expected AS
  SELECT json_extract(value, '\$.request_id') AS request_id, json_extract(value, '\$.stream') AS stream,
         json_extract(value, '\$.input') AS input, json_extract(value, '\$.output') AS output,
         json_extract(value, '\$.cache_read') AS cache_read, json_extract(value, '\$.cache_write') AS cache_write,
         json_extract(value, '\$.cache_write_1h') AS cache_write_1h
  FROM json_each(CAST(readfile('$expect') AS TEXT));
CREATE TEMP VIEW priced AS
  SELECT e.*, c.id AS row_id, c.route, c.status, c.stream AS row_stream, c.aborted, c.usage_source, c.price_model,
         c.priced, c.prompt_tokens, c.completion_tokens, c.cached_tokens, c.cache_write_tokens,
         c.cache_write_1h_tokens, c.cost_usd,
         (CASE WHEN e.input + e.cache_read + e.cache_write > 200000
            THEN e.input * 6.00 + e.cache_read * 0.60 + (e.cache_write - e.cache_write_1h) * 7.50
                 + e.cache_write_1h * 12.00 + e.output * 22.50
            ELSE e.input * 3.00 + e.cache_read * 0.30 + (e.cache_write - e.cache_write_1h) * 3.75
                 + e.cache_write_1h * 6.00 + e.output * 15.00 END) / 1e6 AS want_usd
  FROM expected e LEFT JOIN calls c ON c.request_id = e.request_id;
SELECT request_id, 'row:', ifnull(row_id, 'missing'), route, status, 'stream', row_stream, 'aborted', aborted,
       usage_source, price_model, 'prompt', prompt_tokens, 'want', input + cache_read + cache_write,
       'completion', completion_tokens, 'want', output, 'cached', cached_tokens, 'want', cache_read,
       'cache_write', cache_write_tokens, 'want', cache_write, '1h', cache_write_1h_tokens, 'want', cache_write_1h,
       'cost', printf('%.17g', cost_usd), 'want', printf('%.17g', want_usd)
FROM priced
WHERE row_id IS NULL OR route IS NOT 'messages' OR status IS NOT 200 OR row_stream IS NOT stream
   OR aborted IS NOT 0 OR usage_source IS NOT 'upstream' OR price_model IS NOT 'claude-sonnet-4.5'
   OR priced IS NOT 1 OR prompt_tokens IS NOT input + cache_read + cache_write OR completion_tokens IS NOT output
   OR cached_tokens IS NOT cache_read OR cache_write_tokens IS NOT cache_write
   OR cache_write_1h_tokens IS NOT cache_write_1h OR NOT cost_usd > 0 OR abs(cost_usd - want_usd) > 1e-12;
SQL
)"
  if [[ -n "$bad" ]]; then
    echo "run_sdk_test.sh: ledger rows that disagree with what the Anthropic SDK saw:" >&2
    echo "$bad" >&2
    return 1
  fi
  if (( checked < 8 )); then
    echo "run_sdk_test.sh: expected the Anthropic SDK calls in $expect, found $checked" >&2
    return 1
  fi
  echo "run_sdk_test.sh: $checked Anthropic ledger rows match the SDK's usage and the claude-sonnet-4.5 prices"
}

case "$sdk" in
  openai) packages=(openai openai-7 ws) ;;  # ws: the SDKs' Realtime and Responses WebSocket clients
  anthropic) packages=(anthropic-sdk-0 anthropic-sdk-1) ;;
esac
for package in "${packages[@]}"; do
  if [[ ! -d "$here/node_modules/$package" ]]; then
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
    break
  fi
done

start_fake_upstream
base_url="$upstream_url"
if [[ -n "$tollgate_bin" ]]; then
  start_tollgate
fi

cd "$here"
status=0
if [[ "$sdk" == openai ]]; then
  # Both generations run even when the first fails. openai 7.x declares Node.js 22 and runs on
  # 20 (checked); an older Node.js runs the 5.x generation only.
  generations=(openai)
  if (( $(node -p 'process.versions.node.split(".")[0]') >= 20 )); then
    generations+=(openai-7)
  else
    echo "run_sdk_test.sh: Node.js $(node --version) is older than 20: openai-7 (ResponsesWS) not run"
  fi
  for package in "${generations[@]}"; do
    echo "run_sdk_test.sh: OpenAI SDK $package against $base_url"
    OPENAI_SDK="$package" OPENAI_BASE_URL="$base_url" OPENAI_API_KEY="${OPENAI_API_KEY:-sk-tollgate-sdk-test}" \
      node --test openai_sdk_test.mjs || status=1
  done
else
  # The Anthropic SDKs add /v1 themselves. Both generations run even when the first fails.
  for package in "${packages[@]}"; do
    echo "run_sdk_test.sh: Anthropic SDK $package against ${base_url%/v1}"
    ANTHROPIC_SDK="$package" ANTHROPIC_BASE_URL="${base_url%/v1}" ANTHROPIC_API_KEY= ANTHROPIC_AUTH_TOKEN= \
    ANTHROPIC_UPSTREAM_KEY="${tollgate_bin:+$upstream_key}" ANTHROPIC_LEDGER_EXPECT="$workdir/expect-$package.jsonl" \
      node --test anthropic_sdk_test.mjs || status=1
  done
fi

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
  if [[ "$sdk" == openai ]]; then
    # Each generation's two whisper-1 transcriptions, 200 kB and 9 MB (the second stored in a
    # file, its model sent after it): both read as whisper-1 and priced by the seconds reported.
    stt_rows="$(sqlite3 "$workdir/ledger.db" "SELECT COUNT(*) FROM calls WHERE route = 'other'
      AND requested_model = 'whisper-1' AND price_model = 'whisper-1' AND priced = 1 AND cost_usd > 0")"
    echo "run_sdk_test.sh: priced whisper-1 transcriptions: $stt_rows"
    if (( stt_rows != 2 * ${#generations[@]} )); then
      echo "run_sdk_test.sh: expected $(( 2 * ${#generations[@]} )) priced whisper-1 rows" >&2
      status=1
    fi
  fi
  if [[ "$sdk" == openai ]]; then
    # Each generation's two calls of a model the price table lacks, whose (fake) relay states
    # their cost in the usage: priced at it, the stream too (its usage hidden from the SDK).
    stated_rows="$(sqlite3 "$workdir/ledger.db" "SELECT COUNT(*) FROM calls WHERE route = 'chat_completions'
      AND requested_model = 'qwen/qwen3-235b-a22b' AND price_model IS NULL AND priced = 1 AND abs(cost_usd - 0.0042) < 1e-12")"
    echo "run_sdk_test.sh: calls priced at the cost their upstream stated: $stated_rows"
    if (( stated_rows != 2 * ${#generations[@]} )); then
      echo "run_sdk_test.sh: expected $(( 2 * ${#generations[@]} )) rows priced at the stated cost" >&2
      status=1
    fi
  fi
  if [[ "$sdk" == openai && " ${generations[*]} " == *" openai-7 "* ]]; then
    # openai-7's ResponsesWS session (two responses, gpt-4.1 then gpt-4.1-mini): one row, route
    # responses, status 101, priced at each response's model, requested_model the first
    # response.create's (read from the SDK's masked frames).
    ws_rows="$(sqlite3 "$workdir/ledger.db" "SELECT COUNT(*) FROM calls WHERE route = 'responses' AND method = 'GET'
      AND status = 101 AND usage_source = 'upstream' AND price_model = 'gpt-4.1' AND requested_model = 'gpt-4.1'
      AND priced = 1 AND cost_usd > 0")"
    echo "run_sdk_test.sh: metered Responses WebSocket sessions: $ws_rows"
    if (( ws_rows != 1 )); then
      echo "run_sdk_test.sh: expected the ResponsesWS session's row in the ledger" >&2
      status=1
    fi
    # Its LiveWS session: one row, its model gpt-live-1 (no price shipped: unpriced), carrying the
    # delegated gpt-4.1 response's tokens and cost.
    live_rows="$(sqlite3 "$workdir/ledger.db" "SELECT COUNT(*) FROM calls WHERE route = 'other' AND method = 'GET'
      AND status = 101 AND served_model = 'gpt-live-1' AND usage_source = 'upstream' AND prompt_tokens > 0 AND cost_usd > 0")"
    echo "run_sdk_test.sh: metered Live sessions: $live_rows"
    if (( live_rows != 1 )); then
      echo "run_sdk_test.sh: expected the LiveWS session's row in the ledger" >&2
      status=1
    fi
  fi
  if [[ "$sdk" == anthropic ]]; then
    for package in "${packages[@]}"; do
      # JSON lines to one JSON array, for sqlite's json_each.
      expect="$workdir/expect-$package.json"
      { printf '['; paste -sd, "$workdir/expect-$package.jsonl" 2>/dev/null || true; printf ']'; } >"$expect"
      echo "run_sdk_test.sh: ledger check for $package"
      check_anthropic_ledger "$expect" || status=1
    done
  fi
fi
exit "$status"
