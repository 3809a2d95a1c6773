#!/bin/sh
# tollgate-forecast's command line: bad options and bad inputs end in exit status 2 and a
# message saying what is wrong, quickly, never a crash, a hang or a silently ignored option.
# usage: cli_test.sh TOLLGATE_FORECAST DATA_DIR
set -u
tool=$1
data=$2
# Absolute: some cases run in another directory (a proxy's, with its config/tollgate.yaml).
case $tool in /*) ;; *) tool=$PWD/$tool ;; esac
case $data in /*) ;; *) data=$PWD/$data ;; esac
# The ledger a command line without an input reads comes from these: the caller's are not ours.
unset TOLLGATE_CONFIG TOLLGATE_LEDGER_PATH TOLLGATE_LEDGER_POSTGRES_URL
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
series="$data/servegen_msmall_10m.csv"
fails=0

# expect STATUS REGEX ARGS...: the exit status and a line of stderr matching REGEX (if not empty).
expect() {
  want=$1 pattern=$2
  shift 2
  timeout 60 "$tool" "$@" > "$dir/out" 2> "$dir/err"
  got=$?
  if [ "$got" -ne "$want" ] || { [ -n "$pattern" ] && ! grep -Eq -- "$pattern" "$dir/err"; }; then
    echo "FAIL: tollgate-forecast $*"
    echo "  want status $want and stderr matching: $pattern"
    echo "  got status $got, stderr:"
    sed 's/^/    /' "$dir/err" | head -5
    fails=$((fails + 1))
  fi
}

expect 2 'unknown option --bogus' backtest --input "$series" --column requests --bogus 1
expect 2 'option --horizon does not apply to backtest' backtest --input "$series" --column requests --horizon 5h
expect 2 'at most 100000 are forecast' forecast --input "$series" --column requests --horizon 2147483648h
expect 2 'positive whole number and a unit' forecast --input "$series" --column requests --horizon 9223372036854775807h
expect 2 'at most 100000 are forecast' backtest --input "$series" --column requests --horizons 1h,100000d
expect 2 '--horizons must list at least one' backtest --input "$series" --column requests --horizons ,
expect 2 '--threshold must be a number' detect --input "$series" --column requests --threshold abc
expect 2 '--threshold must be above 0' detect --input "$series" --column requests --threshold -1
expect 2 '--series must be a whole number' bench --series -1
expect 2 '--days must be a number' bench --days nan
expect 2 're-binning needs the per-request records' forecast --input "$series" --column requests --bin 1h
expect 0 '' forecast --input "$series" --column requests --bin 10m --horizon 1h
printf 'timestamp,requests\n1704067200,10\n1704153600,12\n1704240000,11\n' > "$dir/daily.csv"
expect 2 'whole number of 86400 s bins .*give a multiple of 1d$' backtest --input "$dir/daily.csv" --column requests
expect 2 'whole number of 600 s bins .*give a multiple of 10m$' forecast --input "$series" --column requests --horizon 1000s
expect 2 'is a directory' forecast --input "$dir" --column requests

printf 'timestamp,requests\n1736121600,1\n1736125200,1e300\n1736128800,3\n' > "$dir/huge.csv"
expect 2 'above 1e15' forecast --input "$dir/huge.csv" --column requests

# Request logs: a stray second unit, a broken amount of the quantity summed, a missing one.
printf 'timestamp,prompt_tokens\n1736121600,5\n1736121660,abc\n1736121720000,7\n' > "$dir/log.csv"
expect 2 'log.csv:2: timestamp 1736121600 reads as epoch seconds' forecast --requests "$dir/log.csv"
printf 'timestamp,prompt_tokens\n1736121600,5\n0,5\n' > "$dir/log.csv"
expect 2 "log.csv:3: timestamp 0 reads as time since the trace start, but line 2's 1736121600 reads as epoch seconds" \
  forecast --requests "$dir/log.csv"
printf 'timestamp,prompt_tokens\n1736121600,5\n1736121660,abc\n1736121720,7\n' > "$dir/log.csv"
expect 2 'log.csv:3: prompt tokens `abc` is not a number' forecast --requests "$dir/log.csv" --value prompt_tokens --bin 1m
expect 2 'no cost field to sum' forecast --requests "$dir/log.csv" --value cost_usd --bin 1m
# ...while a column nobody sums does not stop a count of requests.
expect 0 '' forecast --requests "$dir/log.csv" --bin 1m --horizon 5m
# Two records 31 years apart: refused at once, not fitted for a minute.
printf 'timestamp\n1\n1000000000\n' > "$dir/span.csv"
expect 2 'more than 1000000' forecast --requests "$dir/span.csv" --time-unit s

# One input at a time, options once, and --json only where it means something.
expect 2 'give one input' forecast --input "$series" --column requests --requests /nonexistent.jsonl
expect 2 'option --horizons is given twice' backtest --input "$series" --column requests --horizons 1h --horizons 24h
expect 2 'option --json does not apply to plot' plot --input "$series" --column requests --json
expect 2 'no rolling forecast to draw' plot --input "$series" --column requests --horizon 2000h
# -o is --output (and so cannot be given beside it); --version prints the version on stdout.
expect 0 "wrote $dir/short.svg" plot --input "$series" --column requests -o "$dir/short.svg"
grep -q '^<svg' "$dir/short.svg" || { echo "FAIL: plot -o wrote no SVG"; fails=$((fails + 1)); }
expect 2 'option --output is given twice' plot --input "$series" --column requests -o "$dir/a.svg" --output "$dir/b.svg"
expect 0 '' --version
grep -Eq '^tollgate-forecast [0-9]+\.[0-9]+\.[0-9]+$' "$dir/out" || { echo "FAIL: --version printed $(cat "$dir/out")"; fails=$((fails + 1)); }
expect 2 'option --team needs a value, not an empty one' forecast --ledger "$dir/none.db" --team ''
# A quoted comma is part of its field (RFC 4180), not a second field.
printf 'timestamp,note,prompt_tokens\n' > "$dir/quoted.csv"
for i in 0 1 2 3 4 5; do printf '%d,"retry, 5",1000\n' $((1736121600 + i * 60)) >> "$dir/quoted.csv"; done
expect 0 '' forecast --requests "$dir/quoted.csv" --value prompt_tokens --bin 1m --horizon 1m
grep -q ' 1000 ' "$dir/out" || { echo "FAIL: quoted comma: the forecast is not 1000"; fails=$((fails + 1)); }
expect 2 'no record names a model' forecast --requests "$dir/quoted.csv" --model gpt-4o --bin 1m
printf '[{"timestamp": 1736121600}]\n' > "$dir/array.json"
expect 2 'a JSON array; give JSON Lines' forecast --requests "$dir/array.json"

# Options that need no input are checked before it is read (a typo should not wait for a month
# of ledger): here the input does not even exist.
expect 2 'duration `6` must be a positive whole number' forecast --ledger "$dir/absent.db" --horizon 6
expect 2 '--train-fraction must be a number' backtest --requests "$dir/absent.csv" --train-fraction 2
expect 2 'duration `x` must be' backtest --ledger "$dir/absent.db" --horizons 1h,x

# A ledger is folded into bins row by row, never held: it forecasts as the same records read as
# a request log. Its rows are written newest first (the bins grow at the front), over three days
# (the default bin is then 10m), for two models.
# With --team or --key, only that team's or key's calls: as a log of those calls alone.
sqlite3 "$dir/ledger.db" "CREATE TABLE calls (id INTEGER PRIMARY KEY, start_ms INTEGER NOT NULL,
    price_model TEXT, client_key_id TEXT, team TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
    cost_usd REAL);
  WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
  INSERT INTO calls (start_ms, price_model, client_key_id, team, prompt_tokens, completion_tokens, cost_usd)
  SELECT 1736121600000 + (20000 - i) * 13007 + (i % 5) * 7919, CASE i % 3 WHEN 0 THEN 'a' ELSE 'b' END,
         'key-' || (i % 4), CASE WHEN i % 4 < 3 THEN 'research' END, 100 + i % 50, 10 + i % 7,
         (100 + i % 50) * 1.7e-6 FROM n;"
log_of() {  # log_of DIR WHERE: the ledger's rows as a request log, DIR/ledger.csv (the same label)
  mkdir -p "$dir/$1"
  sqlite3 -csv -header "$dir/ledger.db" "SELECT start_ms AS timestamp, price_model AS model, prompt_tokens,
      completion_tokens, cost_usd FROM calls WHERE $2 ORDER BY id" > "$dir/$1/ledger.csv"
}
log_of all 1
log_of team "team = 'research'"
log_of key "client_key_id = 'key-3'"
for case in ":all" "--value cost_usd --model a:all" "--value total_tokens --bin 1h:all" \
    "--team research --value cost_usd:team" "--key key-3 --model b:key"; do
  opts=${case%:*} log=${case##*:}
  # shellcheck disable=SC2086
  expect 0 '' forecast --ledger "$dir/ledger.db" --horizon 2h $opts
  mv "$dir/out" "$dir/from_ledger"
  # shellcheck disable=SC2086
  expect 0 '' forecast --requests "$dir/$log/ledger.csv" --horizon 2h $(echo "$opts" | sed 's/--team [^ ]*//; s/--key [^ ]*//')
  if ! cmp -s "$dir/from_ledger" "$dir/out" || [ "$(wc -l < "$dir/out")" -lt 4 ]; then
    echo "FAIL: forecast --ledger $opts differs from the same records as a request log ($log)"
    diff "$dir/from_ledger" "$dir/out" | head -5
    fails=$((fails + 1))
  fi
done
expect 2 'no records for team nobody$' forecast --ledger "$dir/ledger.db" --team nobody
# A time window: the ledger selects it in its query, a request log as it is read, each as the
# rows of [from, to) exported alone.
log_of window "start_ms >= 1736164800000 AND start_ms < 1736380800000"  # --to 2025-01-08: to its end
for opts in "--from 2025-01-06T12:00:00Z --to 2025-01-08" "--from 2025-01-06T12:00:00Z --to 2025-01-08 --model b --bin 1h"; do
  # shellcheck disable=SC2086
  expect 0 '' forecast --requests "$dir/window/ledger.csv" --horizon 2h $(echo "$opts" | sed 's/--from [^ ]* --to [^ ]*//')
  mv "$dir/out" "$dir/from_window"
  for input in "--ledger $dir/ledger.db" "--requests $dir/all/ledger.csv"; do
    # shellcheck disable=SC2086
    expect 0 '' forecast $input --horizon 2h $opts
    if ! cmp -s "$dir/from_window" "$dir/out" || [ "$(wc -l < "$dir/out")" -lt 4 ]; then
      echo "FAIL: forecast $input $opts differs from the rows of that window alone"
      diff "$dir/from_window" "$dir/out" | head -5
      fails=$((fails + 1))
    fi
  done
done
expect 2 'no records from 2025-02-01T00:00:00Z$' forecast --ledger "$dir/ledger.db" --from 2025-02
expect 2 'no records for model b from 2025-02-01T00:00:00Z$' forecast --requests "$dir/all/ledger.csv" --from 2025-02 --model b
expect 2 '^tollgate-forecast: --from must start before --to$' forecast --ledger "$dir/absent.db" --from 2025-01-07 --to 2025-01-06
expect 2 '^tollgate-forecast: --last and --from both' forecast --ledger "$dir/absent.db" --from 2025-01-07 --last 1d
expect 2 "^tollgate-forecast: --to: '2025-02-30' is not a valid time: no such day" forecast --ledger "$dir/absent.db" --to 2025-02-30
expect 2 'duration `1y` must be' forecast --ledger "$dir/absent.db" --last 1y
# A series CSV keeps the bins that start in the window.
expect 0 '' forecast --input "$series" --column requests --from 2025-01-10 --to 2025-01-12T00:05:00Z --horizon 10m
grep -q 'last bin 2025-01-12T00:00:00Z' "$dir/out" || { echo "FAIL: --to on a series CSV"; fails=$((fails + 1)); }
expect 2 'fewer than two bins from 2025-01-10T00:00:00Z to 2025-01-10T00:10:00Z \(1\)' \
  forecast --input "$series" --column requests --from 2025-01-10 --to 2025-01-10T00:10:00Z
# --last: the calls of the last hour only. A proxy's ledger of the last three hours whose calls
# were 1000 prompt tokens each until an hour ago and 1 since (one call every 10 s).
sqlite3 "$dir/recent.db" "CREATE TABLE calls (id INTEGER PRIMARY KEY, start_ms INTEGER NOT NULL, price_model TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL);
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1080)
  INSERT INTO calls (start_ms, price_model, prompt_tokens, completion_tokens, cost_usd)
  SELECT CAST(strftime('%s', 'now') AS INTEGER) * 1000 - i * 10000, 'a', CASE WHEN i < 350 THEN 1 ELSE 1000 END, 1, 0 FROM n;"
expect 0 '' forecast --ledger "$dir/recent.db" --value prompt_tokens --bin 1m --horizon 1m --last 55m
awk '$1 == 1 { exit !($3 < 10) }' "$dir/out" || { echo "FAIL: --last 55m forecasts more than the last hour's calls"; cat "$dir/out"; fails=$((fails + 1)); }

# A ledger of one minute (a proxy just started): the message says what there is and what would do.
sqlite3 "$dir/new.db" "CREATE TABLE calls (id INTEGER PRIMARY KEY, start_ms INTEGER NOT NULL, price_model TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL);
  INSERT INTO calls VALUES (1, 1736121600000, 'a', 1, 1, 0.1), (2, 1736121630000, 'a', 1, 1, 0.1);"
expect 2 'new.db: fewer than two bins of data \(1 complete 1m bin\); a forecast needs two: wait for more history$' \
  forecast --ledger "$dir/new.db"
expect 2 'new.db: fewer than two bins of data \(1 complete 1h bin\); a forecast needs two: give a smaller --bin, or wait' \
  forecast --ledger "$dir/new.db" --bin 1h
expect 2 '--key applies to the ledger only' forecast --requests "$dir/all/ledger.csv" --key key-3

# The proxy's configuration names the ledger: --config FILE, or with no input at all the one
# tollgate starts with ($TOLLGATE_CONFIG, else config/tollgate.yaml); $TOLLGATE_LEDGER_PATH wins
# over a file's ledger.path, as it does for the proxy. Each says on stderr which ledger it reads.
expect 0 '' forecast --ledger "$dir/ledger.db" --horizon 2h --team research
mv "$dir/out" "$dir/from_ledger"
mkdir -p "$dir/proxy/config"
printf 'listen: 127.0.0.1:8080\nledger:\n  path: %s\n' "$dir/ledger.db" > "$dir/proxy/config/tollgate.yaml"
same_as_ledger() {
  if ! cmp -s "$dir/from_ledger" "$dir/out"; then
    echo "FAIL: $1 does not forecast the configuration's ledger as --ledger does"
    fails=$((fails + 1))
  fi
}
expect 0 "^note: reading the ledger $dir/ledger.db \\(ledger.path of $dir/proxy/config/tollgate.yaml\\)$" \
  forecast --config "$dir/proxy/config/tollgate.yaml" --horizon 2h --team research
same_as_ledger "--config FILE"
cd "$dir/proxy" || exit 1
expect 0 '\(ledger.path of config/tollgate.yaml\)$' forecast --horizon 2h --team research
same_as_ledger "config/tollgate.yaml"
cd "$dir" || exit 1
expect 2 '^tollgate-forecast: no input: give .*--config FILE' forecast --horizon 2h
export TOLLGATE_CONFIG="$dir/proxy/config/tollgate.yaml"
expect 0 '\(ledger.path of .*/proxy/config/tollgate.yaml\)$' forecast --horizon 2h --team research
same_as_ledger "\$TOLLGATE_CONFIG"
export TOLLGATE_LEDGER_PATH="$dir/new.db"
expect 2 "overrides .*tollgate.yaml's ledger.path" forecast --config "$dir/proxy/config/tollgate.yaml"
expect 2 '^tollgate-forecast: .*/new.db: fewer than two bins' forecast --config "$dir/proxy/config/tollgate.yaml"
unset TOLLGATE_CONFIG TOLLGATE_LEDGER_PATH
# --fleet: the fleet ledger's url from the configuration or $TOLLGATE_LEDGER_POSTGRES_URL, which
# is never shown (postgres_test reads a real one).
expect 2 '^tollgate-forecast: --fleet: no configuration names a fleet ledger' forecast --fleet
expect 2 '^tollgate-forecast: .*/proxy/config/tollgate.yaml: no ledger.postgres.url$' \
  forecast --fleet --config "$dir/proxy/config/tollgate.yaml"
export TOLLGATE_LEDGER_POSTGRES_URL="postgresql://reader:s3cret@127.0.0.1:1/fleet"
expect 2 '^note: reading the fleet ledger \(\$TOLLGATE_LEDGER_POSTGRES_URL\)$' forecast --fleet
grep -q s3cret "$dir/err" && { echo "FAIL: --fleet shows the url's password"; fails=$((fails + 1)); }
expect 2 '^tollgate-forecast: PostgreSQL: connection to server at "127.0.0.1", port 1 failed' forecast --fleet
unset TOLLGATE_LEDGER_POSTGRES_URL
expect 2 'give one input' forecast --fleet --ledger "$dir/ledger.db"
expect 2 '^tollgate-forecast: --instance applies to the fleet ledger only' forecast --ledger "$dir/ledger.db" --instance edge-1
printf 'ledger:\n  pth: x.db\n' > "$dir/bad.yaml"
expect 2 "^tollgate-forecast: configuration error: .*bad.yaml:2: unknown key 'pth'" forecast --config "$dir/bad.yaml"
expect 2 'give one input' forecast --config "$dir/bad.yaml" --ledger "$dir/ledger.db"

if [ "$fails" -ne 0 ]; then
  echo "$fails case(s) failed"
  exit 1
fi
echo "all cases passed"
