#!/usr/bin/env bash
# Ledger durability with the real binaries: tollgate in front of the fake upstream under load
# (tests/durability/load.py), stopped three ways, each on a fresh ledger:
#   kill    SIGKILL mid-load, restart: PRAGMA integrity_check is ok, the restarted tollgate
#           serves and writes, and every call answered more than flush_interval + slack before
#           the kill is in the ledger, once (calls of the last instant may be lost: at most the
#           rows not yet committed).
#   term    SIGTERM mid-load: every answered call is in the ledger, once.
#   hup     SIGHUP reloads the price files: a model added to prices.yaml is priced from then on,
#           a file that does not load is reported (file:line) and changes nothing; it reads the
#           configuration file again (a budget added is reported as waiting for a restart); tollgate
#           keeps serving, and the calls around the signals are in the ledger.
#   locked  SIGTERM mid-load while another process holds the database's write lock: the rows go
#           to the journal; a restart after the lock is gone replays them: every answered call
#           is in the ledger, once, and the journal is gone.
#   realtime  SIGKILL while a Realtime (WebSocket) session runs, restart: the session's row as
#           it stood at its last save (two responses, priced) is ledgered once, error_kind
#           tollgate_restart.
# usage: tests/durability/sigkill.sh TOLLGATE_BIN FAKE_UPSTREAM_BIN [kill|term|hup|locked|realtime ...]
# Env: PYTHON3, SQLITE3 (default: from PATH); LEDGER_SIGKILL_SLACK_MS (default 1000): time on
# top of flush_interval for a row to be committed on a busy machine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage="usage: $0 TOLLGATE_BIN FAKE_UPSTREAM_BIN [kill|term|hup|locked|realtime ...]"
tollgate_bin="${1:?$usage}"
fake_bin="${2:?$usage}"
shift 2
scenarios=("$@")
(( ${#scenarios[@]} )) || scenarios=(kill term hup locked realtime)
python3="${PYTHON3:-python3}"
sqlite3="${SQLITE3:-sqlite3}"
config="$here/../../config/tollgate.yaml"
slack_ms="${LEDGER_SIGKILL_SLACK_MS:-1000}"
flush_ms="$(sed -n 's/^  flush_interval: *\([0-9]*\)ms.*/\1/p' "$config" | head -n 1)"
flush_ms="${flush_ms:-100}"
workdir="$(mktemp -d)"
pids=()

cleanup() {
  local pid
  exec 7>&- 2>/dev/null || true
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$workdir"
}
trap cleanup EXIT

fail() {
  echo "sigkill.sh: FAIL: $*" >&2
  local log
  for log in "$workdir"/*.err; do
    [[ -s "$log" ]] || continue
    echo "--- $log (last lines)" >&2
    tail -n 15 "$log" >&2
  done
  exit 1
}

start_fake_upstream() {
  "$fake_bin" --listen 127.0.0.1:0 --quiet >"$workdir/fake.out" 2>"$workdir/fake.err" &
  pids+=("$!")
  local pid=$!
  for _ in $(seq 100); do
    upstream_url="$(sed -n 's/.*listening on \(http:\/\/[^ ]*\).*/\1/p' "$workdir/fake.out" | head -n 1)"
    [[ -n "$upstream_url" ]] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  fail "the fake upstream did not start"
}

# start_tollgate DB LOG: tollgate on free loopback ports with the shipped config and the ledger
# at DB; sets tollgate_pid and base_url.
start_tollgate() {
  local db="$1" log="$2" port
  TOLLGATE_LISTEN=127.0.0.1:0 TOLLGATE_ADMIN_LISTEN=127.0.0.1:0 TOLLGATE_UPSTREAM_URL="$upstream_url" \
  TOLLGATE_UPSTREAM_API_KEY=sk-upstream-test TOLLGATE_LEDGER_PATH="$db" \
    "$tollgate_bin" --config "$config" 2>"$log" &
  tollgate_pid=$!
  pids+=("$tollgate_pid")
  for _ in $(seq 150); do
    port="$(grep -o '"listen":"127.0.0.1:[0-9]*"' "$log" | head -n 1 | grep -o '[0-9]*"$' | tr -d '"' || true)"
    if [[ -n "$port" ]]; then
      base_url="http://127.0.0.1:$port/v1"
      return 0
    fi
    kill -0 "$tollgate_pid" 2>/dev/null || break
    sleep 0.1
  done
  fail "tollgate did not start (log: $log)"
}

# wait_log PATTERN LOG: true once LOG has a line matching PATTERN (5 s at most).
wait_log() {
  for _ in $(seq 50); do
    grep -q "$1" "$2" && return 0
    sleep 0.1
  done
  return 1
}

# Waits for tollgate to end; sets tollgate_status.
wait_tollgate() {
  tollgate_status=0
  wait "$tollgate_pid" || tollgate_status=$?
}

# One call through the running tollgate (of model $1, default gpt-4o-mini); prints its x-request-id.
one_call() {
  curl -sS -D - -o /dev/null -H 'content-type: application/json' \
    -d '{"model":"'"${1:-gpt-4o-mini}"'","messages":[{"role":"user","content":"after restart"}]}' \
    "$base_url/chat/completions" | tr -d '\r' | sed -n 's/^x-request-id: //Ip'
}

integrity() {
  local result
  result="$("$sqlite3" "$1" 'PRAGMA integrity_check')"
  [[ "$result" == ok ]] || fail "PRAGMA integrity_check on $1: $result"
}

# check_calls CALLS_JSON DB WINDOW_S: every call answered more than WINDOW_S seconds before the
# signal (WINDOW_S < 0: every answered call) has exactly one ledger row; no request id twice.
check_calls() {
  local calls="$1" db="$2" window="$3" report
  report="$("$sqlite3" -separator ' ' "$db" <<SQL
CREATE TEMP TABLE answered AS
  SELECT json_extract(value, '\$[0]') AS rid, json_extract(value, '\$[1]') AS t
  FROM json_each(CAST(readfile('$calls') AS TEXT), '\$.calls');
CREATE INDEX temp.answered_rid ON answered(rid);
CREATE TEMP TABLE ledgered AS SELECT request_id AS rid, COUNT(*) AS n FROM calls GROUP BY request_id;
CREATE INDEX temp.ledgered_rid ON ledgered(rid);
SELECT
  (SELECT COUNT(*) FROM answered),
  (SELECT COUNT(*) FROM calls),
  (SELECT COUNT(*) FROM ledgered WHERE n > 1),
  (SELECT COUNT(*) FROM answered a WHERE NOT EXISTS (SELECT 1 FROM ledgered l WHERE l.rid = a.rid)
     AND ($window < 0 OR a.t < 0 - ($window))),
  (SELECT COUNT(*) FROM answered a WHERE NOT EXISTS (SELECT 1 FROM ledgered l WHERE l.rid = a.rid)),
  (SELECT printf('%.3f', COALESCE(-MIN(a.t), 0)) FROM answered a
     WHERE NOT EXISTS (SELECT 1 FROM ledgered l WHERE l.rid = a.rid));
SQL
)"
  read -r answered rows dups missing_required missing_all oldest_missing <<<"$report"
  echo "sigkill.sh:   answered $answered, ledger rows $rows, missing $missing_all (oldest answered ${oldest_missing}s before the signal), duplicated ids $dups"
  (( answered >= 50 )) || fail "too little load to judge ($answered calls answered)"
  (( dups == 0 )) || fail "$dups request ids appear more than once in the ledger"
  (( missing_required == 0 )) || fail "$missing_required answered calls missing from the ledger (window ${window}s)"
}

scenario_kill() {
  local db="$workdir/kill.db" window
  window="$(awk -v f="$flush_ms" -v s="$slack_ms" 'BEGIN { printf "%.3f", (f + s) / 1000 }')"
  echo "sigkill.sh: kill: SIGKILL under load, restart (rows answered more than ${window}s before the kill must be kept)"
  start_tollgate "$db" "$workdir/kill-1.err"
  "$python3" "$here/load.py" --url "$base_url" --pid "$tollgate_pid" --signal KILL --signal-after 2.5 \
    --out "$workdir/kill.json"
  wait_tollgate
  (( tollgate_status == 137 )) || fail "tollgate did not die of SIGKILL (status $tollgate_status)"
  start_tollgate "$db" "$workdir/kill-2.err"
  integrity "$db"
  local id
  id="$(one_call)"
  [[ -n "$id" ]] || fail "the restarted tollgate did not answer"
  kill -TERM "$tollgate_pid"
  wait_tollgate
  (( tollgate_status == 0 )) || fail "tollgate exited with $tollgate_status after SIGTERM"
  integrity "$db"
  [[ "$("$sqlite3" "$db" "SELECT COUNT(*) FROM calls WHERE request_id = '$id'")" == 1 ]] ||
    fail "the call made after the restart is not in the ledger"
  check_calls "$workdir/kill.json" "$db" "$window"
}

scenario_term() {
  local db="$workdir/term.db"
  echo "sigkill.sh: term: SIGTERM under load (every answered call must be kept)"
  start_tollgate "$db" "$workdir/term.err"
  "$python3" "$here/load.py" --url "$base_url" --pid "$tollgate_pid" --signal TERM --signal-after 2 \
    --out "$workdir/term.json"
  wait_tollgate
  (( tollgate_status == 0 )) || fail "tollgate exited with $tollgate_status after SIGTERM"
  integrity "$db"
  [[ ! -e "$db.journal" ]] || fail "a journal was left although the database was writable"
  check_calls "$workdir/term.json" "$db" -1
}

scenario_hup() {
  local db="$workdir/hup.db" before after priced
  echo "sigkill.sh: hup: SIGHUP reloads the price files; tollgate keeps serving"
  # The shipped configuration, its price table beside it (a copy this scenario edits).
  mkdir -p "$workdir/hupconf"
  cp "$config" "$here/../../config/prices.yaml" "$workdir/hupconf/"
  config="$workdir/hupconf/tollgate.yaml" start_tollgate "$db" "$workdir/hup.err"
  before="$(one_call hup-model)"
  printf '  hup-model: { input: 1000, output: 2000 }\n' >>"$workdir/hupconf/prices.yaml"
  # The configuration file is read again too: a budget added to it waits for a restart, and says so.
  sed -i 's/^budgets: \[\]$/budgets: [{ scope: global, period: month, limit_usd: 1000 }]/' "$workdir/hupconf/tollgate.yaml"
  grep -q '^budgets: \[{' "$workdir/hupconf/tollgate.yaml" || fail "the shipped config has no 'budgets: []' line to edit"
  kill -HUP "$tollgate_pid"
  wait_log 'prices reloaded' "$workdir/hup.err" || fail "SIGHUP did not reload the prices"
  wait_log 'restart_required.*budget global/month added' "$workdir/hup.err" ||
    fail "SIGHUP did not read the configuration file again"
  kill -0 "$tollgate_pid" 2>/dev/null || fail "tollgate ended on SIGHUP"
  after="$(one_call hup-model)"
  [[ -n "$before" && -n "$after" ]] || fail "a call around the SIGHUP was not answered"
  # A file that does not load: said, and the table in force stays.
  printf '  broken: { input: [1] }\n' >>"$workdir/hupconf/prices.yaml"
  kill -HUP "$tollgate_pid"
  wait_log 'price reload failed.*prices.yaml:[0-9]' "$workdir/hup.err" || fail "a bad price file was not reported with its line"
  local last
  last="$(one_call hup-model)"
  kill -TERM "$tollgate_pid"
  wait_tollgate
  (( tollgate_status == 0 )) || fail "tollgate exited with $tollgate_status after SIGTERM"
  priced="$("$sqlite3" "$db" "SELECT group_concat(priced || ':' || (cost_usd > 0), ' ') FROM (SELECT priced, cost_usd FROM calls
            WHERE request_id IN ('$before', '$after', '$last') ORDER BY start_ms, id)")"
  [[ "$priced" == "0:0 1:1 1:1" ]] ||
    fail "calls before / after the reloads: priced:cost>0 = '$priced', expected '0:0 1:1 1:1'"
}

scenario_locked() {
  local db="$workdir/locked.db"
  echo "sigkill.sh: locked: SIGTERM under load while another process holds the write lock, then restart"
  start_tollgate "$db" "$workdir/locked-1.err"
  # The lock holder keeps BEGIN EXCLUSIVE open until its stdin (fd 7 here) is closed.
  mkfifo "$workdir/lock.fifo"
  "$python3" -c '
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
c.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
' "$db" <"$workdir/lock.fifo" >"$workdir/lock.out" 2>"$workdir/lock.err" &
  local lock_pid=$!
  pids+=("$lock_pid")
  exec 7>"$workdir/lock.fifo"
  for _ in $(seq 100); do
    grep -q locked "$workdir/lock.out" 2>/dev/null && break
    sleep 0.1
  done
  grep -q locked "$workdir/lock.out" || fail "could not lock the database"
  "$python3" "$here/load.py" --url "$base_url" --pid "$tollgate_pid" --signal TERM --signal-after 2 \
    --out "$workdir/locked.json"
  wait_tollgate
  (( tollgate_status == 0 )) || fail "tollgate exited with $tollgate_status after SIGTERM"
  [[ -s "$db.journal" ]] || fail "no journal although the database was locked"
  grep -q 'ledger database not writable' "$workdir/locked-1.err" || fail "the lock was not reported"
  exec 7>&-
  wait "$lock_pid" || true
  start_tollgate "$db" "$workdir/locked-2.err"
  grep -q 'replaying the journal of an earlier run' "$workdir/locked-2.err" ||
    fail "the restart did not replay the journal"
  [[ ! -e "$db.journal" ]] || fail "the journal is still there after its replay"
  kill -TERM "$tollgate_pid"
  wait_tollgate
  (( tollgate_status == 0 )) || fail "tollgate exited with $tollgate_status after SIGTERM"
  integrity "$db"
  check_calls "$workdir/locked.json" "$db" -1
}

scenario_realtime() {
  local db="$workdir/realtime.db" id row
  echo "sigkill.sh: realtime: SIGKILL while a Realtime session runs, restart (the session's row so far must be ledgered)"
  start_tollgate "$db" "$workdir/realtime-1.err"
  "$python3" "$here/realtime_client.py" --url "$base_url" --responses 2 --hold 30 >"$workdir/realtime.out" \
    2>"$workdir/realtime-client.err" &
  local client_pid=$!
  pids+=("$client_pid")
  for _ in $(seq 100); do
    [[ -s "$workdir/realtime.out" ]] && break
    sleep 0.1
  done
  id="$(head -n 1 "$workdir/realtime.out")"
  [[ -n "$id" ]] || fail "the Realtime session did not run"
  sleep 1.5  # the session's row is saved within a second of its last usage event
  kill -KILL "$tollgate_pid"
  wait_tollgate
  (( tollgate_status == 137 )) || fail "tollgate did not die of SIGKILL (status $tollgate_status)"
  wait "$client_pid" || true
  start_tollgate "$db" "$workdir/realtime-2.err"
  kill -TERM "$tollgate_pid"
  wait_tollgate
  (( tollgate_status == 0 )) || fail "tollgate exited with $tollgate_status after SIGTERM"
  integrity "$db"
  grep -q 'Realtime sessions cut by an unclean stop' "$workdir/realtime-2.err" || fail "the restart did not report the cut session"
  row="$("$sqlite3" -separator ' ' "$db" "SELECT COUNT(*), status, aborted, error_kind, usage_source, price_model,
    prompt_tokens, completion_tokens, cost_usd > 0 FROM calls WHERE request_id = '$id'")"
  echo "sigkill.sh:   the cut session's row: $row"
  [[ "$row" == "1 101 1 tollgate_restart upstream gpt-realtime 2000 600 1" ]] ||
    fail "the Realtime session cut by SIGKILL is not ledgered once with its two responses ($row)"
}

command -v "$python3" >/dev/null || fail "python3 not found"
command -v "$sqlite3" >/dev/null || fail "sqlite3 not found"
command -v curl >/dev/null || fail "curl not found"
start_fake_upstream
for s in "${scenarios[@]}"; do
  case "$s" in
    kill | term | hup | locked | realtime) "scenario_$s" ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
echo "sigkill.sh: OK (${scenarios[*]})"
