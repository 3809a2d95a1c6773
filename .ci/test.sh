#!/usr/bin/env bash
# The README's test command: install what is missing, build, and run every test with ctest
# (unit, integration, the official OpenAI Node SDK against tollgate, promtool on /metrics).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/deps.sh test
(cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error)
bash .ci/build.sh
ctest --test-dir build --output-on-failure -j"${JOBS:-$(nproc)}" --timeout 300
