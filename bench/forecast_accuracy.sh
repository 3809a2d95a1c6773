#!/usr/bin/env bash
# Forecaster accuracy: the PROTOCOL.md rolling-origin backtest of every series in
# shared/data/series at 1 h and 24 h, spike detection on BurstGPT, and refresh CPU/memory.
# Prints the JSON of each backtest (method rows: naive, seasonal naive, tollgate); the tables
# with the issue's targets are in forecast/RESULTS.md.
# usage: bash bench/forecast_accuracy.sh [SERIES_DIR]   (default: ../shared/data/series)
set -euo pipefail
cd "$(dirname "$0")/.."
series="${1:-../shared/data/series}"
[ -x build/tollgate-forecast ] || bash .ci/build.sh >/dev/null
for f in burstgpt_1h:all burstgpt_1h:conversation servegen_mlarge_10m:requests servegen_mlarge_1h:requests \
         servegen_msmall_10m:requests; do
  echo "== ${f}"
  build/tollgate-forecast backtest --input "$series/${f%%:*}.csv" --column "${f##*:}" --horizons 1h,24h --json
done
echo "== spike detection (BurstGPT, all)"
build/tollgate-forecast detect --input "$series/burstgpt_1h.csv" --column all
echo "== refresh cost (200 series)"
build/tollgate-forecast bench --bin 10m --horizon 24h
