#!/usr/bin/env bash
# Configures and builds tollgate (Release) into ./build.
# A Release build is profile-guided (README, design notes: "a profile-guided build"): build/pgo/gen
# is an instrumented build of tollgate, tollgate-pgo-train runs it against the fake upstream
# (~25k calls, a few seconds), and ./build is then compiled with the counters that run wrote to
# build/pgo/data. PGO=0 builds without a profile; so does a failed training run, with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
type="${BUILD_TYPE:-Release}"
jobs="${JOBS:-$(nproc)}"
data="$PWD/build/pgo/data"
pgo=""
if [ "$type" = Release ] && [ "${PGO:-1}" != 0 ]; then
  cmake -S . -B build/pgo/gen -DCMAKE_BUILD_TYPE=Release -DTOLLGATE_PGO=generate -DTOLLGATE_PGO_DATA="$data" >/dev/null
  cmake --build build/pgo/gen -j"$jobs" --target tollgate tollgate-pgo-train
  rm -rf "$data"
  if build/pgo/gen/tollgate-pgo-train build/pgo/gen/tollgate . ; then
    pgo=use
  else
    echo "warning: the PGO training run failed; building without a profile" >&2
  fi
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE="$type" -DTOLLGATE_PGO="$pgo" -DTOLLGATE_PGO_DATA="$data" >/dev/null
cmake --build build -j"$jobs"
