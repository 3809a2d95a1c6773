#!/usr/bin/env bash
# The whole test suite (unit, integration, Node SDK, forecast) under ASan+UBSan and under TSan
# (issue 6, item 4): configures build-asan / build-tsan with -DTOLLGATE_SANITIZE, builds every
# target, runs ctest, prints tests passed/failed and wall times per sanitizer and every report.
# usage: bash bench/sanitizers.sh [address|thread|all]      (default: all)
#   JOBS=2          parallel compile jobs          CTEST_JOBS=1   parallel tests
#   TIMEOUT_SCALE   multiplies every ctest timeout (default 4 for address, 15 for thread)
#   ASAN_OPTIONS / UBSAN_OPTIONS / TSAN_OPTIONS are appended to the defaults below (later wins).
# ASan and TSan reports go to <build dir>/sanitizer-logs/test/<asan|tsan>.<executable>.<pid>:
# processes the tests start in the background (tollgate and the fake upstream in the SDK tests)
# keep stderr in temporary files, so stderr alone would lose their reports. UBSan under ASan
# writes to stderr only (its log_path is ignored), so its reports are read from the ctest log; a
# UBSan abort in a background process shows as a failed SDK test without the report. Exits
# non-zero on a failed test or on any report.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

mode="${1:-all}"
case "$mode" in
  address) sanitizers=(address) ;;
  thread) sanitizers=(thread) ;;
  all) sanitizers=(address thread) ;;
  *) echo "usage: $0 [address|thread|all]" >&2; exit 2 ;;
esac
jobs="${JOBS:-2}"
ctest_jobs="${CTEST_JOBS:-1}"
user_asan="${ASAN_OPTIONS:-}" user_ubsan="${UBSAN_OPTIONS:-}" user_tsan="${TSAN_OPTIONS:-}"
summary=()
status=0
report_start='runtime error:|ERROR: (Address|Leak)Sanitizer|WARNING: ThreadSanitizer'

# probe DIR FLAGS SOURCE: compiles SOURCE (on stdin) with the build's compiler and FLAGS, runs it,
# prints its output. Used to learn whether LSan and TSan work in this environment at all.
probe() {
  local dir="$1" flags="$2" cxx
  cxx="$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$dir/CMakeCache.txt")"
  "$cxx" $flags -x c++ - -o "$dir/sanitizer-probe" && "$dir/sanitizer-probe" 2>&1 || true
}

# scale_timeouts DIR FACTOR: ctest --timeout only sets the default; tests with a TIMEOUT property
# (integration and SDK tests) keep theirs, so multiply those in the generated test files. Each file
# is scaled once: configure and catch_discover_tests rewrite them, dropping the marker.
scale_timeouts() {
  local dir="$1" factor="$2" f
  while IFS= read -r f; do
    grep -q '^# timeouts scaled by bench/sanitizers.sh' "$f" && continue
    FACTOR="$factor" perl -pi -e 's/\bTIMEOUT "?(\d+)"?/sprintf("TIMEOUT \"%d\"", $1 * $ENV{FACTOR})/ge' "$f"
    sed -i "1i # timeouts scaled by bench/sanitizers.sh (x$factor)" "$f"
  done < <(grep -rlE '\bTIMEOUT "?[0-9]' "$dir" --include='*.cmake' | grep -v '/CMakeFiles/')
}

# print_reports LOGDIR: every report file, with the top 6 frames of each stack (the full text
# stays in the file).
print_reports() {
  local f
  for f in "$1"/*; do
    [[ -s "$f" ]] || continue
    echo "---- $f"
    awk '/^ +#[0-9]+ / { if (++frames <= 6) print; next } NF { frames = 0; print }' "$f" | head -n 150
  done
}

for san in "${sanitizers[@]}"; do
  if [[ "$san" == address ]]; then dir="$repo/build-asan" scale="${TIMEOUT_SCALE:-4}"
  else dir="$repo/build-tsan" scale="${TIMEOUT_SCALE:-15}"; fi
  logs="$dir/sanitizer-logs"
  note=""
  started=$SECONDS

  echo "== $san: configure $dir"
  # CMAKE_CXX_FLAGS / CMAKE_EXE_LINKER_FLAGS are reset so a stale cache cannot add a second set
  # of sanitizer flags; Debug keeps assertions, -O1 keeps the instrumented suite fast enough.
  cmake -S "$repo" -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-g -O1" \
    -DCMAKE_CXX_FLAGS= -DCMAKE_EXE_LINKER_FLAGS= -DTOLLGATE_SANITIZE="$san" >/dev/null
  rm -rf "$logs"
  mkdir -p "$logs/build" "$logs/test"

  prefix=()
  if [[ "$san" == address ]]; then
    # LSan stops the process's threads with ptrace-like machinery that some containers and
    # debuggers forbid; then every leak check dies, so learn that once and say so.
    detect_leaks=1
    out="$(probe "$dir" "-fsanitize=address -g" <<<'#include <cstdlib>
        int main() { void* volatile p = std::malloc(64); p = nullptr; return p != nullptr; }')"
    if [[ "$out" != *"detected memory leaks"* ]]; then
      detect_leaks=0
      note="LeakSanitizer does not work here (ptrace/container restrictions): leak checks OFF"
      echo "== $san: $note" >&2
    fi
    asan="halt_on_error=1:detect_leaks=$detect_leaks:detect_stack_use_after_return=1"
    asan+=":check_initialization_order=1:strict_init_order=1"
    [[ -f bench/lsan.supp ]] && export LSAN_OPTIONS="suppressions=$repo/bench/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
    ubsan="halt_on_error=1:print_stacktrace=1:report_error_type=1"
    [[ -f bench/ubsan.supp ]] && ubsan+=":suppressions=$repo/bench/ubsan.supp"
    set_env() {  # set_env LOGDIR
      export ASAN_OPTIONS="$asan:log_path=$1/asan:log_exe_name=1${user_asan:+:$user_asan}"
      export UBSAN_OPTIONS="$ubsan:log_path=$1/ubsan:log_exe_name=1${user_ubsan:+:$user_ubsan}"
    }
  else
    # gcc 12's TSan cannot map its shadow memory with the high mmap randomness of newer kernels
    # (vm.mmap_rnd_bits > 28: "unexpected memory mapping"); running without ASLR avoids that.
    out="$(probe "$dir" "-fsanitize=thread -g" <<<'int main() { return 0; }')"
    if [[ "$out" == *"unexpected memory mapping"* ]]; then
      prefix=(setarch "$(uname -m)" -R)
      note="TSan needs ASLR off here (unexpected memory mapping): tests run under setarch -R"
      echo "== $san: $note" >&2
    fi
    tsan="halt_on_error=1:second_deadlock_stack=1:history_size=4"
    [[ -f bench/tsan.supp ]] && tsan+=":suppressions=$repo/bench/tsan.supp"
    set_env() {
      export TSAN_OPTIONS="$tsan:log_path=$1/tsan:log_exe_name=1${user_tsan:+:$user_tsan}"
    }
  fi

  echo "== $san: build (-j$jobs)"
  set_env "$logs/build"  # catch_discover_tests runs each test binary at build time
  build_started=$SECONDS
  if ! "${prefix[@]}" cmake --build "$dir" -j"$jobs"; then
    summary+=("$san: BUILD FAILED after $((SECONDS - build_started)) s")
    print_reports "$logs/build"
    status=1
    continue
  fi
  build_time=$((SECONDS - build_started))

  scale_timeouts "$dir" "$scale"
  echo "== $san: ctest (timeouts x$scale, -j$ctest_jobs)"
  set_env "$logs/test"
  test_started=$SECONDS
  ctest_status=0
  "${prefix[@]}" ctest --test-dir "$dir" --output-on-failure --timeout $((300 * scale)) -j"$ctest_jobs" \
    2>&1 | tee "$logs/ctest.log" || ctest_status=$?
  test_time=$((SECONDS - test_started))

  counts="$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$logs/ctest.log" | tail -n 1 || true)"
  [[ -n "$counts" ]] || counts="no ctest summary (ctest exit $ctest_status)"
  # UBSan inside the ASan runtime ignores log_path and writes to stderr, which ctest keeps.
  inline="$(grep -cE "$report_start" "$logs/ctest.log" || true)"
  reports=$(( $(find "$logs/build" "$logs/test" -type f -size +0 | wc -l) + inline ))
  line="$san: $counts; $reports sanitizer report(s); build ${build_time} s, tests ${test_time} s, total $((SECONDS - started)) s"
  [[ -n "$note" ]] && line+=" [$note]"
  summary+=("$line")
  failed="$(sed -n '/The following tests FAILED:/,$p' "$logs/ctest.log" | tail -n +2 | grep -E '^\s+[0-9]+ - ' || true)"
  [[ -n "$failed" ]] && summary+=("$failed")
  if (( ctest_status != 0 || reports > 0 )); then
    status=1
    echo "== $san: sanitizer reports"
    print_reports "$logs/build"
    print_reports "$logs/test"
    awk -v start="$report_start" '$0 ~ start { print "---- ctest.log: " $0; frames = 8; next }
      frames > 0 && /^ +#[0-9]+ / { print; frames--; next } { frames = 0 }' "$logs/ctest.log"
  fi
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$status"
