#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang in build-fuzz and runs each one for a bounded
# time on a scratch copy of its committed seed corpus, then prints a summary table. Exits non-zero
# if any target crashed, leaked, timed out or broke an invariant; the reproducers are kept.
#
#   bench/fuzz.sh                   every target, FUZZ_SECONDS (default 60) each
#   bench/fuzz.sh --smoke           every target, 10 s each
#   bench/fuzz.sh --ci              every target: the seed corpus replayed, then 20000 mutations
#                                   (fuzz_forecast 3000) from a fixed seed (deterministic: what
#                                   passes here passes in CI)
#   bench/fuzz.sh fuzz_sse ...      only these targets
#
# Environment: FUZZ_SECONDS (per target), FUZZ_JOBS (build parallelism, default: all CPUs),
# FUZZ_BUILD_DIR (default build-fuzz), FUZZ_WORK (scratch dir, default a new /tmp dir),
# FUZZ_KEEP=1 (keep the scratch dir, with the grown corpora, even when nothing was found).
# Reproduce a finding:  build-fuzz/fuzz/<target> <crash file>
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${FUZZ_BUILD_DIR:-$repo/build-fuzz}"
seconds="${FUZZ_SECONDS:-60}"
jobs="${FUZZ_JOBS:-$(nproc)}"
all_targets=(fuzz_sse fuzz_usage fuzz_pricing fuzz_config fuzz_request_inspect fuzz_http_request fuzz_ws_frames fuzz_forecast)

targets=()
ci=0
for arg in "$@"; do
  case "$arg" in
    --smoke) seconds=10 ;;
    --ci) ci=1 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    fuzz_*) targets+=("$arg") ;;
    *) echo "fuzz.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=("${all_targets[@]}")

# Per target: longest input and dictionary (the usage and HTTP targets read JSON too).
max_len_of() {
  case "$1" in
    fuzz_config) echo 16384 ;;  # the commented default tollgate.yaml is ~11 KiB
    *) echo 8192 ;;
  esac
}
# Mutations of --ci per target: the forecaster runs ~60 inputs a second under the sanitizers
# (every input fits up to 160 bins), the others thousands.
runs_of() {
  case "$1" in
    fuzz_forecast) echo "${FUZZ_RUNS:-3000}" ;;
    *) echo "${FUZZ_RUNS:-20000}" ;;
  esac
}
dicts_of() {
  local d="$repo/tests/fuzz/dict"
  case "$1" in
    fuzz_sse) echo "$d/sse.dict" ;;
    fuzz_usage) echo "$d/sse.dict $d/json.dict" ;;
    fuzz_pricing|fuzz_config) echo "$d/yaml.dict" ;;
    fuzz_request_inspect) echo "$d/json.dict" ;;
    fuzz_http_request) echo "$d/http.dict $d/json.dict" ;;
    fuzz_ws_frames) echo "$d/json.dict" ;;
    fuzz_forecast) echo "$d/forecast.dict" ;;
  esac
}

command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (Debian: apt-get install clang)" >&2; exit 2; }
work="${FUZZ_WORK:-$(mktemp -d /tmp/tollgate-fuzz.XXXXXX)}"
mkdir -p "$work"
echo "== configure + build $build (clang, -j$jobs)"
start=$SECONDS
if ! { cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
         -DTOLLGATE_FUZZ=ON -DTOLLGATE_BUILD_TESTS=OFF &&
       nice -n 10 cmake --build "$build" --target "${targets[@]}" -j"$jobs"; } >"$work/build.log" 2>&1; then
  grep -E -A5 'error|Error' "$work/build.log" | head -40 >&2
  echo "fuzz.sh: build failed, see $work/build.log" >&2
  exit 2
fi
grep -E 'warning:' "$work/build.log" || true
echo "   built in $((SECONDS - start))s"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

failed=0
rows=()
for t in "${targets[@]}"; do
  corpus="$work/corpus/$t"
  artifacts="$work/artifacts/$t"
  log="$work/$t.log"
  rm -rf "$corpus" "$artifacts"
  mkdir -p "$corpus" "$artifacts"
  cp "$repo/tests/fuzz/corpus/$t/"* "$corpus/"
  seeds=$(ls "$corpus" | wc -l)
  dict="$work/$t.dict"
  cat $(dicts_of "$t") >"$dict"
  echo "== $t: ${seconds}s, $seeds seeds, max_len $(max_len_of "$t")"
  status=0
  # The outer timeout only guards against a hung run; libFuzzer stops itself at max_total_time.
  timeout --kill-after=10 $((seconds + 120)) nice -n 10 "$build/fuzz/$t" "$corpus" \
    $(if [[ $ci == 1 ]]; then echo "-seed=1 -runs=$(runs_of "$t")"; else echo "-max_total_time=$seconds"; fi) \
    -max_len="$(max_len_of "$t")" -dict="$dict" -timeout=10 -rss_limit_mb=2560 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [[ -n "$execs" ]] || execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  found=$(find "$artifacts" -type f | wc -l)
  size=$(ls "$corpus" | wc -l)
  if [[ $status -ne 0 || $found -gt 0 ]]; then
    failed=1
    echo "   FOUND (exit $status): $(find "$artifacts" -type f | tr '\n' ' ')"
    grep -m1 -E 'ERROR: (AddressSanitizer|libFuzzer|LeakSanitizer)|runtime error|fuzz invariant failed|uncaught exception' "$log" | sed 's/^/   /' || true
    echo "   log: $log"
  fi
  rows+=("$(printf '%-22s %6s %10s %8s %8s %8s' "$t" "$([[ $ci == 1 ]] && echo ci || echo "${seconds}s")" "${execs:-?}" "${rate:-?}" "$seeds->$size" "$found")")
done

echo
printf '%-22s %6s %10s %8s %8s %8s\n' target time execs exec/s corpus crashes
for r in "${rows[@]}"; do echo "$r"; done
echo
if [[ $failed -ne 0 ]]; then
  echo "fuzz.sh: findings kept in $work/artifacts (logs in $work)"
  exit 1
fi
if [[ "${FUZZ_KEEP:-0}" == 1 || -n "${FUZZ_WORK:-}" ]]; then
  echo "fuzz.sh: no findings; corpora and logs in $work"
else
  rm -rf "$work"
  echo "fuzz.sh: no findings"
fi
