#!/bin/sh
# tollgate's own command line (report has its own tests): bad arguments end in exit status 2 and
# a message naming them, never in a start on another configuration.
# usage: tollgate_cli.sh TOLLGATE SOURCE_DIR
set -u
tool=$1
src=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
unset TOLLGATE_CONFIG
fails=0
# expect STATUS REGEX ARGS...: the exit status and a line of stdout or stderr matching REGEX.
expect() {
  want=$1 pattern=$2
  shift 2
  (cd "$src" && timeout 30 "$tool" "$@") > "$dir/out" 2>&1
  got=$?
  if [ "$got" -ne "$want" ] || ! grep -Eq -- "$pattern" "$dir/out"; then
    echo "FAIL: tollgate $*: want status $want and output matching: $pattern; got $got:"
    sed 's/^/    /' "$dir/out" | head -5
    fails=$((fails + 1))
  fi
}
expect 0 '^tollgate [0-9]+\.[0-9]+\.[0-9]+$' --version
expect 0 '^Usage: tollgate' --help
expect 2 "unknown argument '--bogus'" --bogus
expect 2 '^tollgate: --config needs a file name$' --config
# Empty (a script's unset variable): not config/tollgate.yaml in its place.
expect 2 '^tollgate: --config needs a file name, not an empty one$' --config '' --check-config
expect 2 '^tollgate: --config needs a file name, not an empty one$' --config= --check-config
expect 2 "configuration error: $dir/none.yaml: cannot open" --check-config --config "$dir/none.yaml"
expect 0 'configuration OK' --check-config --config config/tollgate.yaml
[ "$fails" -eq 0 ] && echo "all cases passed"
exit "$fails"
