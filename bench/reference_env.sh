#!/usr/bin/env bash
# Prints the path of a python3 launcher that imports statsmodels 0.13 and xgboost 1.7.4 (issue
# 3's reference libraries), for bench/forecast_reference.py. Debian 12 ships both, but
# python3-scipy depends on python3-pythran -> libboost-dev (1.74), which conflicts with our
# libboost1.81-dev. So the packages that pull it in are downloaded from the same mirror and
# unpacked into a private directory instead of installed; nothing system-wide changes except the
# conflict-free dependencies installed with apt-get below.
# usage: PY=$(bash bench/reference_env.sh); "$PY" bench/forecast_reference.py FILE COLUMN
set -euo pipefail
if python3 -c 'import statsmodels, xgboost' 2>/dev/null; then
  command -v python3
  exit 0
fi
dir="${TOLLGATE_REFERENCE_ENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate-reference}"
launcher="$dir/python3"
if [ ! -x "$launcher" ] || ! "$launcher" -c 'import statsmodels, xgboost' 2>/dev/null; then
  {
    export DEBIAN_FRONTEND=noninteractive
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y --no-install-recommends python3 python3-numpy python3-pandas python3-patsy \
      python3-packaging python3-decorator libgfortran5 libblas3 liblapack3 libgomp1 \
      || { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends python3 python3-numpy \
           python3-pandas python3-patsy python3-packaging python3-decorator libgfortran5 libblas3 liblapack3 libgomp1; }
    rm -rf "$dir" && mkdir -p "$dir/debs"
    (cd "$dir/debs" && apt-get download python3-scipy liblbfgsb0 python3-statsmodels python3-statsmodels-lib \
       python3-xgboost libxgboost0 libdmlc0)
    for d in "$dir"/debs/*.deb; do dpkg -x "$d" "$dir/root"; done
    cat > "$launcher" <<SH
#!/bin/sh
PYTHONPATH="$dir/root/usr/lib/python3/dist-packages\${PYTHONPATH:+:\$PYTHONPATH}" \\
LD_LIBRARY_PATH="$dir/root/usr/lib/x86_64-linux-gnu:$dir/root/usr/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
exec /usr/bin/python3 "\$@"
SH
    chmod +x "$launcher"
    "$launcher" -c 'import statsmodels, xgboost'
  } >&2
fi
echo "$launcher"
