#!/usr/bin/env bash
# Forecaster accuracy against issue 3's targets, one command, markdown on stdout:
#  1. the PROTOCOL.md rolling-origin backtest of the five reference series at 1 h and 24 h:
#     tollgate's MASE, the best of the six reference methods (issue 3), the ratio and the
#     <= 0.9 target, 90 % coverage and its band (0.90 +- max(0.03, 2 sqrt(0.09/n)));
#  2. spike detection on BurstGPT (the five largest bursts flagged in their first bin, false
#     alarms per day);
#  3. the CPU of a refresh of 200 series and the memory per series (10-minute bins a day ahead,
#     one-minute bins an hour ahead).
# The backtests' JSON (PROTOCOL.md section 9) is kept in $FORECAST_JSON_DIR when it is set.
# More figures and what was tried: forecast/RESULTS.md.
# usage: bash bench/forecast_accuracy.sh [SERIES_DIR]   (default: ../shared/data/series)
set -euo pipefail
cd "$(dirname "$0")/.."
series="${1:-../shared/data/series}"
if [ ! -f "$series/burstgpt_1h.csv" ]; then
  echo "forecast_accuracy.sh: no series files in '$series' (shared/data/series beside the checkout);" \
       "pass their directory: bash bench/forecast_accuracy.sh DIR" >&2
  exit 2
fi
command -v python3 >/dev/null || bash .ci/deps.sh bench >/dev/null
[ -x build/tollgate-forecast ] || bash .ci/build.sh >/dev/null
out="${FORECAST_JSON_DIR:-$(mktemp -d)}"
mkdir -p "$out"
[ -n "${FORECAST_JSON_DIR:-}" ] || trap 'rm -rf "$out"' EXIT
for f in burstgpt_1h:all burstgpt_1h:conversation servegen_mlarge_10m:requests servegen_mlarge_1h:requests \
         servegen_msmall_10m:requests; do
  build/tollgate-forecast backtest --input "$series/${f%%:*}.csv" --column "${f##*:}" --horizons 1h,24h --json \
    > "$out/${f%%:*}.${f##*:}.json"
done
build/tollgate-forecast detect --input "$series/burstgpt_1h.csv" --column all --json > "$out/detect.json"
build/tollgate-forecast bench --bin 10m --horizon 24h --json > "$out/bench.json"
# The proxy's one-minute forecasters (5m and 1h gauges) refresh every minute: timed too.
build/tollgate-forecast bench --bin 1m --horizon 1h --json > "$out/bench_1m.json"

python3 - "$out" <<'PY'
import json, math, sys, glob, os
d = sys.argv[1]
# Best MASE of the six reference methods (issue 3: statsmodels 0.13, xgboost 1.7.4).
best = {("burstgpt_1h:all", "1h"): 0.631, ("burstgpt_1h:all", "24h"): 0.687,
        ("burstgpt_1h:conversation", "1h"): 0.545, ("burstgpt_1h:conversation", "24h"): 0.571,
        ("servegen_mlarge_10m:requests", "1h"): 0.452, ("servegen_mlarge_10m:requests", "24h"): 0.882,
        ("servegen_mlarge_1h:requests", "1h"): 0.415, ("servegen_mlarge_1h:requests", "24h"): 0.848,
        ("servegen_msmall_10m:requests", "1h"): 1.291, ("servegen_msmall_10m:requests", "24h"): 1.874}
print("| series | horizon | tollgate MASE | naive | seasonal naive (day) | best reference | ratio | <= 0.9 | coverage90 | band | in band | pinball | points |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
met = inband = rows = 0
ratios = []
for f in sorted(glob.glob(os.path.join(d, "*.json"))):
    if os.path.basename(f) in ("detect.json", "bench.json", "bench_1m.json"):
        continue
    j = json.load(open(f))
    by = {(r["method"], r["horizon"]): r for r in j["results"]}
    for h in ("1h", "24h"):
        t = by[("tollgate", h)]
        b = best[(j["series"], h)]
        q = t["mase"] / b
        n = t["n_points_prob"]
        w = max(0.03, 2 * math.sqrt(0.09 / n))
        ok_c = abs(t["coverage90"] - 0.9) <= w
        rows += 1; met += q <= 0.9; inband += ok_c; ratios.append(q)
        print(f"| {j['series']} | {h} | {t['mase']:.4f} | {by[('naive', h)]['mase']:.4f} | "
              f"{by[('seasonal_naive_day', h)]['mase']:.4f} | {b:.3f} | {q:.3f} | {'yes' if q <= 0.9 else 'no'} | "
              f"{t['coverage90']:.3f} | {0.9 - w:.2f}-{0.9 + w:.2f} | {'yes' if ok_c else 'no'} | {t['pinball']:.4f} | {n} |")
print()
print(f"MASE <= 0.9 x best reference: {met} of {rows} (mean ratio {sum(ratios) / len(ratios):.4f}); "
      f"coverage in band: {inband} of {rows}")
det = json.load(open(os.path.join(d, "detect.json")))
print(f"Spikes (BurstGPT all, test part): {det['bursts_flagged_in_first_bin']} of {len(det.get('bursts', [])) or 5} "
      f"largest bursts flagged in their first bin; {det['false_alarms_per_day']:.2f} false-alarm episodes per day "
      f"(target: 5 of 5, <= 0.5)")
for name in ("bench.json", "bench_1m.json"):
    be = json.load(open(os.path.join(d, name)))
    print(f"Refresh of {be['series']} series ({be['bin_seconds'] // 60}-minute bins, {be['horizon_steps']} steps): "
          f"{be['refresh_cpu_ms']:.1f} ms of CPU (target < 100 ms); {be['memory_bytes_per_series'] / 1024:.0f} KiB per series, "
          f"fixed whatever the uptime")
PY
