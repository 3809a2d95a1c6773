#!/usr/bin/env bash
# The README's run command: install what is missing, build, run tollgate on config/tollgate.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/deps.sh
bash .ci/build.sh
exec ./build/tollgate --config config/tollgate.yaml "$@"
