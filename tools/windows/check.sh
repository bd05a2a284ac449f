#!/usr/bin/env bash
# Smoke tests of what tools/windows/deps.sh built, run under wine: cjson
# (and argparse) load in lua.exe and luajit.exe, a program linked against
# libcurl-4.dll prints curl_version() with the features imgedit needs, and
# libpng, libwebp and stb round-trip a picture. Exits non-zero on a failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${IMGEDIT_WIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imgedit-windows}
[ -f "$CACHE/env.sh" ] || { echo "check.sh: run tools/windows/deps.sh first" >&2; exit 1; }
# shellcheck source=/dev/null
. "$CACHE/env.sh"
unset DISPLAY
export LC_ALL=C

FAILED=0

# run NAME EXPECTED CMD...: compare CMD's output (CRs from the Windows C
# runtime dropped) with EXPECTED, or only require success if it is "-".
run() {
  local name=$1 want=$2 out
  shift 2
  if ! out=$("$@" 2>&1 | tr -d '\r'); then
    echo "FAIL $name: exit status ${PIPESTATUS[0]}: $out"
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
  mkdir -p "$CACHE/check"
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
