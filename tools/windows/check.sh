#!/usr/bin/env bash
# Smoke tests of what tools/windows/deps.sh built, run under wine: cjson
# (and argparse) load in lua.exe and luajit.exe, a program linked against
# libcurl-4.dll prints curl_version() with the features imgedit needs, and
# libpng, libwebp and stb round-trip a picture. Exits non-zero on a failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# $HOME may be unset in CI: then the user's home from the passwd database.
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE=${IMGEDIT_WIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imgedit-windows}
[ -f "$CACHE/env.sh" ] || { echo "check.sh: run tools/windows/deps.sh first" >&2; exit 1; }
# shellcheck source=/dev/null
. "$CACHE/env.sh"
unset DISPLAY
export LC_ALL=C

FAILED=0
mkdir -p "$CACHE/check"

# run NAME EXPECTED CMD...: compare CMD's output (CRs from the Windows C
# runtime dropped) with EXPECTED, or only require success if it is "-".
# Output goes through a file, not a pipe: a wineserver started by CMD
# inherits its stdout and lingers 3 s, and a pipe would wait for it.
run() {
  local name=$1 want=$2 out rc=0
  shift 2
  "$@" >"$CACHE/check/out" 2>&1 || rc=$?
  out=$(tr -d '\r' <"$CACHE/check/out")
  if [ "$rc" -ne 0 ]; then
    echo "FAIL $name: exit status $rc: $out"
    FAILED=1
  elif [ "$want" != - ] && [ "$out" != "$want" ]; then
    echo "FAIL $name: got '$out', want '$want'"
    FAILED=1
  else
    echo "ok   $name: ${out//$'\n'/ | }"
  fi
}

# Each test program is built from its C file in tools/windows/, linked as
# core.dll would be (WIN_RUNTIME_LDFLAGS: no MinGW runtime DLLs).
build() {
  # shellcheck disable=SC2086
  "$WIN_CC" -O2 -o "$CACHE/check/$1.exe" "$HERE/$1.c" $2 $WIN_RUNTIME_LDFLAGS
}

for lua in "$WIN_LUA54" "$WIN_LUAJIT"; do
  name=$(basename "$lua")
  run "$name cjson" '[1]' "$WINE" "$lua" -e "print(require'cjson'.encode{1})"
  run "$name argparse" 'ok' "$WINE" "$lua" -e "assert(require'argparse'()) print'ok'"
done

build curlver "$(PKG_CONFIG_LIBDIR=$WIN_PKG_CONFIG_LIBDIR pkg-config --cflags --libs libcurl)"
run "libcurl-4.dll" - "$WINE" "$CACHE/check/curlver.exe"

build imglibs "$(PKG_CONFIG_LIBDIR=$WIN_PKG_CONFIG_LIBDIR pkg-config --cflags --libs libpng libwebp stb)"
run "libpng, libwebp, stb" - "$WINE" "$CACHE/check/imglibs.exe"

exit "$FAILED"
