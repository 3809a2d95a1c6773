#!/usr/bin/env bash
# The README's test command: install what is missing, build, and run every test with ctest
# (unit, integration, the official OpenAI and Anthropic Node SDKs against tollgate, promtool on
# /metrics, SIGKILL/SIGTERM durability, the ledger's tests again against SQLite 3.50), then the fuzz
# targets' deterministic smoke run (clang).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/deps.sh test
(cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error)
bash tests/sqlite_current/fetch.sh
bash .ci/build.sh
ctest --test-dir build --output-on-failure -j"${JOBS:-$(nproc)}" --timeout 300
FUZZ_JOBS="${JOBS:-$(nproc)}" bash bench/fuzz.sh --ci
