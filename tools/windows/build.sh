#!/usr/bin/env bash
# The Windows folder, from nothing: tools/windows/deps.sh cross-builds the
# libraries from Debian's source packages into a cache outside the repo
# (once per machine), then imgedit\core.dll is built twice with MinGW-w64:
# for Lua 5.4 (with lua.exe, for scripts and the command line) and for
# LuaJIT's lua51.dll (the Lua that LÖVE ships). The result is a folder a
# user copies as it is:
#
#   imgedit-windows\
#     imgedit.cmd                  the command line (lua.exe bin\imgedit)
#     lua.exe lua54.dll            Lua 5.4
#     *.dll                        libcurl (Schannel), libpng, libwebp, zlib
#     imgedit\core.dll cjson.dll   the modules for Lua 5.4
#     lua\                         the Lua files (imgedit, argparse)
#     bin\imgedit                  the command's script
#     love\                        for LÖVE / LuaJIT: imgedit\core.dll, cjson.dll
#
# Usage: tools/windows/build.sh [out-folder]   (default build/windows/imgedit-windows)
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$here/build/windows/imgedit-windows}

bash "$here/tools/windows/deps.sh"
# shellcheck disable=SC1091
. "${IMGEDIT_WIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imgedit-windows}/env.sh"

# The libraries' versions and recipes: a DLL built against others is made again.
deps_id=$(cat "$IMGEDIT_WIN_CACHE"/stamps/* | sha256sum | cut -c1-16)

# make for one Lua: the flags of its DLL, its build folder.
build_for() { # name lua_version cflags libs
  local t0=$SECONDS
  # pkg-config reads the Windows prefix's .pc files only.
  PKG_CONFIG_LIBDIR="$WIN_PKG_CONFIG_LIBDIR" PKG_CONFIG_PATH='' \
  make -C "$here" --no-print-directory TARGET_OS=windows CC="$WIN_CC" LUA_VERSION="$2" LUA=lua"$2" \
    LUA_INCDIR="${3#-I}" BUILD="build/windows/$1" CFLAGS="-O2" DEPS_ID="$deps_id" \
    LIBS="$4 $WIN_RUNTIME_LDFLAGS" "build/windows/$1/imgedit/core.dll" >/dev/null
  "$WIN_STRIP" --strip-unneeded "$here/build/windows/$1/imgedit/core.dll"
  echo "imgedit: core.dll for $1 built in $((SECONDS - t0)) s"
}
build_for lua54 5.4 "$WIN_LUA54_CFLAGS" "$WIN_LUA54_LIBS"
build_for luajit 5.1 "$WIN_LUAJIT_CFLAGS" "$WIN_LUAJIT_LIBS"

rm -rf "$out.tmp"
mkdir -p "$out.tmp/imgedit" "$out.tmp/love/imgedit" "$out.tmp/lua" "$out.tmp/bin"
cp "$here/build/windows/lua54/imgedit/core.dll" "$out.tmp/imgedit/"
cp "$here/build/windows/luajit/imgedit/core.dll" "$out.tmp/love/imgedit/"
cp "$WIN_LUA54_DIR/lua.exe" "$WIN_LUA54_DIR/lua54.dll" "$out.tmp/"
cp "$WIN_LUA54_DIR/cjson.dll" "$out.tmp/"
cp "$WIN_LUAJIT_DIR/cjson.dll" "$out.tmp/love/"
# The DLLs the modules import, and theirs, found in the prefix (the
# system's own, KERNEL32 and the like, are not there).
copy_deps() { # file
  local d
  for d in $(x86_64-w64-mingw32-objdump -p "$1" | sed -n 's/^\s*DLL Name: //p'); do
    if [ -f "$WIN_DLL_DIR/$d" ] && [ ! -f "$out.tmp/$d" ]; then
      cp "$WIN_DLL_DIR/$d" "$out.tmp/"
      copy_deps "$WIN_DLL_DIR/$d"
    fi
  done
}
copy_deps "$out.tmp/imgedit/core.dll"
copy_deps "$out.tmp/love/imgedit/core.dll"
cp -r "$here/lua/imgedit" "$out.tmp/lua/"
rm -rf "$out.tmp/lua/imgedit/emulator" # its C half needs libmicrohttpd: not built for Windows
cp "$WIN_LUA54_DIR/lua/argparse.lua" "$out.tmp/lua/"
cp "$here/bin/imgedit" "$out.tmp/bin/"
# The command: Lua 5.4 beside it, the folder's modules first.
printf '%s\r\n' '@echo off' 'setlocal' \
  'set "LUA_PATH=%~dp0lua\?.lua;%~dp0lua\?\init.lua;;"' \
  'set "LUA_CPATH=%~dp0?.dll;;"' \
  '"%~dp0lua.exe" "%~dp0bin\imgedit" %*' 'exit /b %errorlevel%' > "$out.tmp/imgedit.cmd"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "imgedit: the Windows folder is $out ($(du -sh "$out" | cut -f1))"
