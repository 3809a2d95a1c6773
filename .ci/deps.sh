#!/usr/bin/env bash
# Installs what tollgate needs on Debian 12 (as root), only what is missing.
#   .ci/deps.sh          build + run dependencies
#   .ci/deps.sh test     also what the test suite needs (promtool, PostgreSQL, Node.js for the SDK tests,
#                        python3 for the durability test, clang + libFuzzer for the fuzz smoke run)
#   .ci/deps.sh bench    also what the benchmarks need (nginx, wrk)
set -euo pipefail
pkgs=(g++ cmake make pkg-config libboost1.81-dev libboost-system1.81-dev libssl-dev openssl ca-certificates
      nlohmann-json3-dev libsimdjson-dev prometheus-cpp-dev catch2 libsqlite3-dev sqlite3 libyaml-cpp-dev zlib1g-dev libhowardhinnant-date-dev libjemalloc-dev libpq-dev curl)
case "${1:-}" in
  test)  pkgs+=(prometheus postgresql python3 clang libclang-rt-14-dev) ; command -v npm >/dev/null || pkgs+=(nodejs npm) ;;
  bench) pkgs+=(nginx-light wrk util-linux procps python3) ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  # Versioned Boost names on purpose: the unversioned libboost-*-dev are 1.74 and would remove 1.81.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
