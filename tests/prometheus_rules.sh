#!/usr/bin/env bash
# The Prometheus files under docker/prometheus and the Grafana dashboard: the config and its rule
# file pass promtool, the alert rules pass their unit tests, and every tollgate metric a rule or
# the dashboard reads is one the README's metrics table documents (a renamed metric would leave
# an alert that can never fire). Given the binaries, also end to end: a real Prometheus server
# scrapes a real tollgate whose budget one call has spent and fires TollgateBudgetExhausted, and
# takes every query of the dashboard.
# usage: bash tests/prometheus_rules.sh REPO [FAKE_UPSTREAM_BIN TOLLGATE_BIN]
set -euo pipefail
repo="${1:?usage: $0 REPO [FAKE_UPSTREAM_BIN TOLLGATE_BIN]}"
fake_bin="${2:-}"
tollgate_bin="${3:-}"
dir="$repo/docker/prometheus"
promtool check config "$dir/prometheus.yml"
(cd "$dir" && promtool test rules tollgate_rules_test.yml)
dashboard="$repo/docker/grafana/tollgate.json"
# Every PromQL expression of the Grafana dashboard, one per line.
dashboard_exprs() {
  python3 -c 'import json, sys
for p in json.load(open(sys.argv[1]))["panels"]:
    for t in p.get("targets", []): print(t["expr"])' "$dashboard"
}
missing=0
for m in $( (grep -v '^ *#' "$dir/tollgate_rules.yml"; dashboard_exprs) | grep -o 'tollgate_[a-z0-9_]*' | sort -u); do
  documented="${m%_bucket}"
  if ! grep -q "\`$documented\`" "$repo/README.md"; then
    echo "prometheus_rules.sh: $m is read by a rule or the dashboard but not in the README's metrics table" >&2
    missing=1
  fi
done
[[ "$missing" == 0 ]] || exit 1
[[ -n "$tollgate_bin" ]] || exit 0
command -v prometheus >/dev/null || { echo "prometheus_rules.sh: no prometheus server: end-to-end part skipped"; exit 0; }

work="$(mktemp -d)"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "prometheus_rules.sh: $*" >&2
  for f in "$work"/*.err; do echo "--- $f" >&2; tail -n 20 "$f" >&2; done
  exit 1
}
# first_match FILE SED_EXPR PID: waits (10 s) for a line of FILE the sed expression prints.
first_match() {
  local out
  for _ in $(seq 100); do
    out="$(sed -n "$2" "$1" | head -n 1)"
    if [[ -n "$out" ]]; then echo "$out"; return 0; fi
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

"$fake_bin" --listen 127.0.0.1:0 --quiet >"$work/fake.out" 2>"$work/fake.err" &
pids+=("$!")
upstream="$(first_match "$work/fake.out" 's/.*listening on \(http:\/\/[^ ]*\).*/\1/p' "$!")" || fail "fake upstream did not start"

cat >"$work/tollgate.yaml" <<YAML
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
upstream: { url: "$upstream", api_key: sk-test }
ledger: { path: "$work/ledger.db" }
pricing: { file: "$repo/config/prices.yaml" }
budgets:
  - { scope: global, period: month, limit_usd: 0.000001 }
YAML
"$tollgate_bin" --config "$work/tollgate.yaml" 2>"$work/tollgate.err" &
tg=$!
pids+=("$tg")
port="$(first_match "$work/tollgate.err" 's/.*"listen":"127.0.0.1:\([0-9]*\)".*/\1/p' "$tg")" || fail "tollgate did not start"
admin="$(first_match "$work/tollgate.err" 's/.*"admin_listen":"127.0.0.1:\([0-9]*\)".*/\1/p' "$tg")" || fail "tollgate did not start"
curl -sf "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model":"gpt-4.1","messages":[{"role":"user","content":"Hello"}]}' >/dev/null || fail "the call failed"

prom_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat >"$work/prometheus.yml" <<YAML
global: { scrape_interval: 1s, evaluation_interval: 1s }
rule_files: ["$dir/tollgate_rules.yml"]
scrape_configs:
  - job_name: tollgate
    static_configs: [{ targets: ["127.0.0.1:$admin"] }]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.out" 2>"$work/prometheus.err" &
pids+=("$!")
for _ in $(seq 600); do
  alerts="$(curl -sf "http://127.0.0.1:$prom_port/api/v1/alerts" || echo '{}')"
  if python3 -c '
import json, sys
alerts = json.load(sys.stdin).get("data", {}).get("alerts", [])
sys.exit(0 if any(a["labels"].get("alertname") == "TollgateBudgetExhausted" and a["labels"].get("scope") == "global"
                  and a["state"] == "firing" for a in alerts) else 1)' <<<"$alerts"; then
    echo "prometheus_rules.sh: Prometheus fired TollgateBudgetExhausted on a live tollgate"
    # Every query of the dashboard is valid PromQL to this Prometheus, on tollgate's real series.
    dashboard_exprs | python3 -c '
import json, sys, urllib.parse, urllib.request
bad = 0
for expr in sys.stdin.read().splitlines():
    url = "http://127.0.0.1:" + sys.argv[1] + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        r = json.load(urllib.request.urlopen(url, timeout=10))
        ok = r.get("status") == "success"
    except Exception as e:
        ok, r = False, str(e)
    if not ok:
        bad += 1
        print("dashboard query refused:", expr, r, file=sys.stderr)
print("prometheus_rules.sh: dashboard queries refused:", bad)
sys.exit(1 if bad else 0)' "$prom_port" || fail "a dashboard query is not valid PromQL"
    exit 0
  fi
  sleep 0.1
done
fail "TollgateBudgetExhausted never fired; alerts: $alerts"
