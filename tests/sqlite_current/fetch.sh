#!/usr/bin/env bash
# Fetches the SQLite 3.50.4 amalgamation (sqlite3.c, sqlite3.h) into tests/sqlite_current/src, for
# the ledger's tests built a second time against a current SQLite (tests/CMakeLists.txt).
#
# Why: Debian 12's SQLite is 3.40, but Debian 13 ships 3.46 and Ubuntu 24.04 3.45, and from 3.43
# on SUM() adds reals with compensation, and the reports, which equal SUM bit for bit, add as
# the linked version does (report.cpp, sql_real_sum). Debian packages no amalgamation and npm's registry is the only network
# the CI has: the npm package better-sqlite3 12.4.1 bundles the upstream amalgamation of 3.50.4
# (its one patch writes two constants of the date functions as their values). Pinned by SHA-256;
# nothing of the package but those two files is used, and nothing is built or installed by npm.
set -euo pipefail
cd "$(dirname "$0")"
version=12.4.1
tgz_sha=14398acbf00d1e8fe0a2753df7d4f15c13138e4b874f4e6e96791f65b4536d0d
c_sha=90b7189566ea710ee18361b25d893f5cda3fcf43033223a16384762f53e99a85
h_sha=abd1514e0351f79393d1be882830afdb40a8099e8257f311f0bfdf8486f11bea
sums() { printf '%s  %s\n%s  %s\n' "$c_sha" "$1/sqlite3.c" "$h_sha" "$1/sqlite3.h"; }
if [ -f src/sqlite3.c ] && sums src | sha256sum --quiet -c 2>/dev/null; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent --loglevel=error "better-sqlite3@$version" >/dev/null)
echo "$tgz_sha  $tmp/better-sqlite3-$version.tgz" | sha256sum --quiet -c
tar -xzf "$tmp/better-sqlite3-$version.tgz" -C "$tmp" package/deps/sqlite3/sqlite3.c package/deps/sqlite3/sqlite3.h
sums "$tmp/package/deps/sqlite3" | sha256sum --quiet -c
rm -rf src
mkdir -p src
mv "$tmp/package/deps/sqlite3/sqlite3.c" "$tmp/package/deps/sqlite3/sqlite3.h" src/
touch src/sqlite3.c src/sqlite3.h  # npm packs every file as of 1985: make would not see a new version
echo "SQLite amalgamation $(grep -m1 -o '"3\.[0-9.]*"' src/sqlite3.h | tr -d '"') in tests/sqlite_current/src"
