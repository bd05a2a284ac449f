#!/usr/bin/env bash
# Builds, from Debian 12 source packages, the Windows (x86_64, MinGW-w64,
# posix threads) libraries that imgedit's core needs, into a cache folder
# outside the repository, so that a later step can cross-compile
# imgedit\core.dll against them and run things under wine.
#
#   tools/windows/deps.sh [--force] [--refresh] [--no-check]
#
#   --force     rebuild every part from an empty prefix, cached or not
#   --refresh   refresh the private apt source lists now (else once a day)
#   --no-check  skip tools/windows/check.sh (the wine smoke tests) at the end
#
# Cache: # $HOME may be unset in CI: then the user's home from the passwd database.
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE=${IMGEDIT_WIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imgedit-windows}
#   $CACHE/prefix/bin/      libcurl-4.dll libpng16.dll libwebp.dll
#                           libwebpmux.dll libwebpdemux.dll
#                           (libwebpdecoder.dll) zlib1.dll (Debian's)
#   $CACHE/prefix/include/  curl/ png.h libpng16/ webp/ stb/ zlib.h
#   $CACHE/prefix/lib/      libcurl.dll.a libpng16.dll.a libpng.dll.a
#                           libwebp.dll.a libwebpmux.dll.a libwebpdemux.dll.a
#                           libstb.a (src/stb_impl.c) libz.dll.a
#                           static-winpthread/ (libpthread.a: see below)
#   $CACHE/prefix/lib/pkgconfig/  libcurl.pc libpng.pc libpng16.pc
#                           libwebp.pc libwebpmux.pc libwebpdemux.pc stb.pc
#                           zlib.pc lua5.4.pc (= lua54.pc) luajit.pc
#   $CACHE/lua54/           lua.exe luac.exe lua54.dll cjson.dll
#                           include/ lib/liblua54.dll.a lua/argparse.lua
#   $CACHE/luajit/          luajit.exe lua51.dll cjson.dll include/
#                           lib/liblua51.dll.a (= libluajit-5.1.dll.a)
#                           lua/jit/ lua/argparse.lua
#   $CACHE/env.sh, env.mk   compiler, flags, DLL list, wine settings
#   $CACHE/toolchain.cmake  the CMake toolchain file used for libpng, libwebp
#   $CACHE/wine/            the WINEPREFIX
#   $CACHE/src/ dl/ apt/ logs/ stamps/   sources, downloads, private apt
#                           setup, build logs, one stamp per part
#
# A Lua C module for Windows, e.g. with Lua 5.4 (luajit: the same with
# luajit in place of lua5.4; it links lua51.dll, as LÖVE's modules do):
#   . $CACHE/env.sh
#   $WIN_CC -O2 -shared -o core.dll *.c \
#     $(PKG_CONFIG_LIBDIR=$WIN_PKG_CONFIG_LIBDIR pkg-config --cflags --libs \
#       libcurl libpng libwebp stb lua5.4) $WIN_RUNTIME_LDFLAGS -pthread
#
# Sources come only from Debian's archive, through a private apt
# configuration under $CACHE/apt (the machine's apt setup is left alone).
# Each part has a stamp holding its Debian version, this script's recipe
# version for it and the toolchain; a second run rebuilds nothing.
# Every DLL and exe is linked with -static-libgcc and, where threads are
# used at all, static winpthread: none needs libgcc_s_seh-1.dll or
# libwinpthread-1.dll.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${IMGEDIT_WIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imgedit-windows}
HOST=x86_64-w64-mingw32
# The posix-threads compiler by name, whatever update-alternatives says.
WCC=$HOST-gcc-posix
PREFIX=$CACHE/prefix
JOBS=$(nproc 2>/dev/null || echo 2)
# Refresh the private source lists when older than this (seconds).
APT_MAX_AGE=${IMGEDIT_WIN_APT_MAX_AGE:-86400}

# Bump a part's recipe when the way it is built changes: that part rebuilds.
declare -A RECIPE=([curl]=2 [libpng]=2 [libwebp]=2 [lua54]=1 [luajit]=1
  [cjson]=1 [stb]=1 [argparse]=1)

# Debian packages this script needs on the build machine.
NEEDED_PACKAGES=(gcc-mingw-w64-x86-64-posix libz-mingw-w64-dev wine64
  dpkg-dev make cmake gcc libc6-dev xz-utils patch pkgconf lua-argparse)

FORCE=no
REFRESH=no
CHECK=yes
for arg in "$@"; do
  case $arg in
    --force) FORCE=yes ;;
    --refresh) REFRESH=yes ;;
    --no-check) CHECK=no ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "deps.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

# configure scripts must not find the build machine's Linux libraries.
export PKG_CONFIG_LIBDIR=$PREFIX/lib/pkgconfig
export PKG_CONFIG_PATH=
unset PKG_CONFIG_SYSROOT_DIR CFLAGS CPPFLAGS LDFLAGS LIBS CC CXX
export LC_ALL=C

say() { printf 'imgedit-windows: %s\n' "$*"; }
die() { printf 'imgedit-windows: error: %s\n' "$*" >&2; exit 1; }

# Seconds since the given $EPOCHREALTIME, one decimal: for the timings.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# Install what is missing (as root), or name the apt-get line and stop:
# the machine may be brand new, or a developer's without root.
ensure_packages() {
  local missing=() p
  for p in "${NEEDED_PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != installed ]; then
      missing+=("$p")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local line="apt-get install -y --no-install-recommends ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "imgedit-windows: missing Debian packages; as root run:" >&2
    echo "  apt-get update && $line" >&2
    exit 1
  fi
  local t=$EPOCHREALTIME
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $line -qq >/dev/null
  say "packages: $(since "$t")s"
}

# A private apt setup under $CACHE/apt: deb-src lines derived from the
# machine's own sources, its own lists, cache and status, no hooks. Only
# `apt-get -c $APTCONF` reads it; /etc/apt is never written.
setup_apt() {
  local a=$CACHE/apt f
  mkdir -p "$a/lists/partial" "$a/cache/archives/partial" "$a/sources.list.d"
  [ -e "$a/status" ] || : >"$a/status"
  APTCONF=$a/apt.conf
  write_if_changed "$APTCONF" <<EOF
// Written by imgedit's tools/windows/deps.sh: apt for source packages only.
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Pre-Invoke;
#clear DPkg::Post-Invoke;
Dir::Etc::SourceList "$a/sources.list";
Dir::Etc::SourceParts "$a/sources.list.d";
Dir::State::Lists "$a/lists";
Dir::State::status "$a/status";
Dir::Cache "$a/cache";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Sandbox::User "$(id -un)";
Acquire::Languages "none";
EOF
  # Debian's archive only (a third-party repository may have no sources):
  # one-line sources, each "deb" line again as "deb-src"...
  [ -f /etc/apt/sources.list ] &&
    sed -n 's/^[[:space:]]*deb[[:space:]]/deb-src /p' /etc/apt/sources.list |
    write_if_changed "$a/sources.list"
  [ -f "$a/sources.list" ] || : >"$a/sources.list"
  # ... and deb822 stanzas whose Types has "deb", again as deb-src.
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    awk '/^Types:/ { print ($0 ~ /[ \t]deb([ \t]|$)/) ? "Types: deb-src" : "Enabled: no"; next } { print }' \
      /etc/apt/sources.list.d/debian.sources | write_if_changed "$a/sources.list.d/debian.sources"
  else
    rm -f "$a/sources.list.d/debian.sources"
  fi
  [ -s "$a/sources.list" ] || [ -f "$a/sources.list.d/debian.sources" ] ||
    die "no Debian sources in /etc/apt/sources.list or /etc/apt/sources.list.d/debian.sources"
  local stamp=$a/lists/.updated
  # Refresh when asked, when the lists are old, or the sources changed.
  if [ "$REFRESH" = yes ] || [ ! -e "$stamp" ] || [ "$a/sources.list" -nt "$stamp" ] ||
    [ "$a/sources.list.d/debian.sources" -nt "$stamp" ] ||
    [ $(($(date +%s) - $(stat -c %Y "$stamp"))) -gt "$APT_MAX_AGE" ]; then
    local t=$EPOCHREALTIME
    if apt-get -c "$APTCONF" -qq update >"$CACHE/logs/apt-update.log" 2>&1; then
      touch "$stamp"
      # Versions that could not be fetched are tried again after a refresh.
      : >"$a/unavailable"
      say "apt source lists: $(since "$t")s"
    elif [ -e "$stamp" ]; then
      say "apt source lists: refresh failed, using the old ones (see $CACHE/logs/apt-update.log)"
    else
      cat "$CACHE/logs/apt-update.log" >&2
      die "apt-get update (private configuration) failed"
    fi
  fi
  touch "$a/unavailable"
}

# Replace a file with stdin only when the content differs, so its mtime
# (which make may depend on) stays put on a cached run.
write_if_changed() {
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}

# All versions of the source packages in use, from one apt-cache call.
declare -A VERSIONS=()
load_versions() {
  local k v p=
  while read -r k v; do
    case $k in
      Package:) p=$v ;;
      Version:) VERSIONS[$p]+="$v " ;;
    esac
  done < <(apt-cache -c "$APTCONF" showsrc --only-source "$@" 2>/dev/null)
}

# The versions of a source package the lists offer, newest first, less
# those already found missing from the archive (some security uploads 404).
source_versions() {
  local pkg=$1 v found=()
  # shellcheck disable=SC2086 # a space-separated list
  for v in $(printf '%s\n' ${VERSIONS[$pkg]:-} | sort -u); do
    grep -qxF "$pkg=$v" "$CACHE/apt/unavailable" || found+=("$v")
  done
  [ ${#found[@]} -gt 0 ] || die "no source package $pkg in the apt lists"
  # Sort with dpkg's version order (few entries: insertion sort).
  local i j t
  for ((i = 1; i < ${#found[@]}; i++)); do
    for ((j = i; j > 0; j--)); do
      dpkg --compare-versions "${found[j]}" gt "${found[j - 1]}" || break
      t=${found[j]}; found[j]=${found[j - 1]}; found[j - 1]=$t
    done
  done
  printf '%s\n' "${found[@]}"
}

# Download (apt skips files it has already, checking their hashes) and
# unpack a fresh copy of a source package; Debian's patches are applied by
# dpkg-source. When the archive no longer has the newest version (some
# security uploads answer 404 here), tries the older ones.
# Sets SRC_VERSION and SRC_DIR.
fetch_source() {
  local pkg=$1 v log=$CACHE/logs/$1-download.log
  mkdir -p "$CACHE/dl" "$CACHE/src"
  : >"$log"
  for v in $(source_versions "$pkg"); do
    if ! (cd "$CACHE/dl" && apt-get -c "$APTCONF" -q source --download-only "$pkg=$v") >>"$log" 2>&1; then
      grep -q ' 404 ' "$log" || die "apt-get source $pkg=$v failed (see $log)"
      say "$pkg $v: not in the archive (404), trying an older version"
      echo "$pkg=$v" >>"$CACHE/apt/unavailable"
      continue
    fi
    SRC_VERSION=$v
    SRC_DIR=$CACHE/src/$pkg-$v
    rm -rf "$CACHE/src/$pkg-"*
    dpkg-source -x "$CACHE/dl/${pkg}_${v#*:}.dsc" "$SRC_DIR" >>"$log" 2>&1 ||
      die "dpkg-source -x failed for $pkg $v (see $log)"
    return 0
  done
  die "no version of $pkg could be downloaded (see $log)"
}

# Identifies the compiler and Windows runtime: a new one rebuilds all.
toolchain_id() {
  printf '%s gcc=%s' "$WCC" "$("$WCC" -dumpversion)"
  dpkg-query -W -f=' ${Package}=${Version}' gcc-mingw-w64-x86-64-posix \
    mingw-w64-x86-64-dev libz-mingw-w64-dev 2>/dev/null
}

# part NAME SRCPKG DEPS... : build NAME with build_NAME unless its stamp
# says the same Debian version, recipe, toolchain and dependencies were
# built already. Prints the time it took, or "cached". A stamp's first line
# is its key; its second, when it was built, so that parts depending on it
# (whose keys hash the whole stamp) rebuild after it rebuilds.
part() {
  local name=$1 pkg=$2 stamp=$CACHE/stamps/$1 t=$EPOCHREALTIME d deps="" want="" key
  shift 2
  for d in "$@"; do deps+=" $d:$(sha256sum <"$CACHE/stamps/$d" | cut -c1-16)"; done
  if [ "$pkg" != - ]; then want=$(source_versions "$pkg" | sed -n 1p); fi # sed reads all: no SIGPIPE under pipefail
  key=$(part_key "$name" "$pkg" "$want" "$deps")
  if [ "$FORCE" != yes ] && [ "$(head -n 1 "$stamp" 2>/dev/null)" = "$key" ] && outputs_there "$name"; then
    say "$name: cached${want:+ ($pkg $want)}"
    return 0
  fi
  SRC_VERSION=$want SRC_DIR=
  if [ "$pkg" != - ]; then
    fetch_source "$pkg"
    if [ "$SRC_VERSION" != "$want" ]; then
      # The newest could not be fetched; the fallback may be what we have.
      key=$(part_key "$name" "$pkg" "$SRC_VERSION" "$deps")
      if [ "$FORCE" != yes ] && [ "$(head -n 1 "$stamp" 2>/dev/null)" = "$key" ] && outputs_there "$name"; then
        say "$name: cached ($pkg $SRC_VERSION)"
        return 0
      fi
    fi
  fi
  rm -f "$stamp"
  local log=$CACHE/logs/$name.log
  # In the background and waited for: inside `if` or `||`, bash would
  # ignore set -e in the build functions.
  ("build_$name" "$SRC_DIR") >"$log" 2>&1 &
  if ! wait $!; then
    tail -n 40 "$log" >&2
    die "$name failed; the whole log is $log"
  fi
  printf '%s\nbuilt=%s\n' "$key" "$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)" >"$stamp"
  say "$name: built ${SRC_VERSION:+$pkg $SRC_VERSION }in $(since "$t")s"
}

# part_key NAME SRCPKG VERSION DEPS: what a part's stamp must say.
part_key() {
  printf 'part=%s source=%s=%s recipe=%s toolchain=%s extra=%s deps=%s' \
    "$1" "$2" "$3" "${RECIPE[$1]}" "$TOOLCHAIN" "$(extra_key "$1")" "$4"
}

# What each part leaves in the cache: a part whose stamp fits but some of
# whose files were removed is built again.
outputs_there() {
  local f files
  case $1 in
    curl) files="prefix/bin/libcurl-4.dll prefix/lib/libcurl.dll.a prefix/include/curl/curl.h prefix/lib/pkgconfig/libcurl.pc" ;;
    libpng) files="prefix/bin/libpng16.dll prefix/lib/libpng16.dll.a prefix/include/png.h prefix/lib/pkgconfig/libpng.pc" ;;
    libwebp) files="prefix/bin/libwebp.dll prefix/lib/libwebp.dll.a prefix/include/webp/encode.h prefix/lib/pkgconfig/libwebp.pc" ;;
    stb) files="prefix/lib/libstb.a prefix/include/stb/stb_image.h prefix/lib/pkgconfig/stb.pc" ;;
    lua54) files="lua54/lua.exe lua54/lua54.dll lua54/lib/liblua54.dll.a lua54/include/lua.h prefix/lib/pkgconfig/lua5.4.pc" ;;
    luajit) files="luajit/luajit.exe luajit/lua51.dll luajit/lib/liblua51.dll.a luajit/include/luajit.h prefix/lib/pkgconfig/luajit.pc" ;;
    cjson) files="lua54/cjson.dll luajit/cjson.dll" ;;
    argparse) files="lua54/lua/argparse.lua luajit/lua/argparse.lua" ;;
  esac
  for f in $files; do [ -e "$CACHE/$f" ] || return 1; done
}

# Inputs of a part that live in this repository (hashed into its key).
extra_key() {
  case $1 in
    stb) sha256sum <"$ROOT/src/stb_impl.c" | cut -c1-16 ;;
    argparse) dpkg-query -W -f='${Version}' lua-argparse ;;
    *) echo - ;;
  esac
}

# Flags every Windows binary here is linked with: no libgcc_s_seh-1.dll,
# no libwinpthread-1.dll (see install_static_winpthread), stripped.
WLDFLAGS="-static-libgcc -L$PREFIX/lib/static-winpthread -s"

# A CMake toolchain file for the posix-threads MinGW compiler, finding
# only Windows headers and libraries (ours and Debian's zlib).
write_toolchain() {
  write_if_changed "$CACHE/toolchain.cmake" <<EOF
# Written by imgedit's tools/windows/deps.sh.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)
set(CMAKE_C_COMPILER $WCC)
set(CMAKE_RC_COMPILER $HOST-windres)
set(CMAKE_FIND_ROOT_PATH $PREFIX /usr/$HOST)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
EOF
}

# cmake_build SRC ARGS...: configure (Release, -O2, shared, stripped,
# static libgcc), build with make -j and install into $PREFIX.
cmake_build() {
  local src=$1
  shift
  cmake -S "$src" -B "$src/build-win" -DCMAKE_TOOLCHAIN_FILE="$CACHE/toolchain.cmake" \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS_RELEASE="-O2 -DNDEBUG" \
    -DCMAKE_SHARED_LINKER_FLAGS="$WLDFLAGS" -DCMAKE_EXE_LINKER_FLAGS="$WLDFLAGS" \
    -DCMAKE_INSTALL_PREFIX="$PREFIX" -DBUILD_SHARED_LIBS=ON "$@"
  make -C "$src/build-win" -j"$JOBS"
  make -C "$src/build-win" install
}

# Fails when a built DLL or exe would need a MinGW runtime DLL.
check_imports() {
  local f bad
  for f in "$@"; do
    bad=$("$HOST-objdump" -p "$f" | sed -n 's/^\tDLL Name: //p' |
      grep -iE 'libgcc_s|libwinpthread|libstdc' || true)
    [ -z "$bad" ] || die "$f imports $bad"
  done
}

# curl with Schannel (Windows' own TLS), SSPI, IPv6, zlib; the threaded
# resolver uses Win32 threads. Built with upstream's MinGW makefile
# (lib/Makefile.mk, no configure: the slow part), libcurl-4.dll as its
# autotools build names it. LDAP is off; nothing else optional is on.
build_curl() {
  cd "$1"
  # Debian's series ends with two patches that rename the library for its
  # GnuTLS and NSS flavours; debian/rules pops them for the plain one.
  patch -R -p1 -s <debian/patches/99_nss.patch
  patch -R -p1 -s <debian/patches/90_gnutls.patch
  cd lib
  local mk=(-f Makefile.mk CC="$WCC" AR="$HOST-ar" RC="$HOST-windres"
    TRIPLET="$HOST" CFG=-schannel-sspi-zlib-ipv6 ZLIB_PATH="/usr/$HOST"
    CURL_DLL_SUFFIX=-4)
  # Through the environment: the makefile appends to these.
  export CFLAGS="-O2 -Winvalid-pch" CPPFLAGS="-DCURL_DISABLE_LDAP -DCURL_DISABLE_LDAPS"
  export LDFLAGS="$WLDFLAGS"
  mkdir -p "$HOST"
  # Every file starts with curl_setup.h, which pulls in windows.h: compiled
  # once as a precompiled header (same flags), the build takes half the
  # time. GCC checks that it fits and otherwise compiles as usual.
  local cmd
  cmd=$(make -n "${mk[@]}" "$HOST/altsvc.o" | grep -F ' -c altsvc.c ')
  eval "${cmd% -c altsvc.c *} -x c-header curl_setup.h -o curl_setup.h.gch"
  make -j"$JOBS" "${mk[@]}" libcurl-4.dll
  rm -f curl_setup.h.gch
  mkdir -p "$PREFIX/bin" "$PREFIX/lib/pkgconfig" "$PREFIX/include/curl"
  cp libcurl-4.dll "$PREFIX/bin/"
  cp libcurl.dll.a "$PREFIX/lib/"
  cp ../include/curl/*.h "$PREFIX/include/curl/"
  local v
  v=$(sed -n 's/^#define LIBCURL_VERSION "\(.*\)"/\1/p' ../include/curl/curlver.h)
  cat >"$PREFIX/lib/pkgconfig/libcurl.pc" <<EOF
prefix=$PREFIX
exec_prefix=\${prefix}
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: libcurl
URL: https://curl.se/
Description: Library to transfer files with ftp, http, etc. (Windows, Schannel; imgedit tools/windows/deps.sh)
Version: $v
Libs: -L\${libdir} -lcurl
Libs.private: -lz -lws2_32 -lcrypt32 -lbcrypt
Cflags: -I\${includedir}
EOF
  check_imports "$PREFIX/bin/libcurl-4.dll"
}

# libpng against Debian's zlib for MinGW (zlib1.dll); CMake configures in
# a fraction of the autotools time. No tools, no tests.
build_libpng() {
  cmake_build "$1" -DPNG_SHARED=ON -DPNG_STATIC=OFF -DPNG_TESTS=OFF \
    -DPNG_EXECUTABLES=OFF
  check_imports "$PREFIX/bin/libpng16.dll"
}

# libwebp (decode, encode; sharpyuv is inside), mux and demux; no tools.
build_libwebp() {
  cmake_build "$1" -DWEBP_BUILD_ANIM_UTILS=OFF -DWEBP_BUILD_CWEBP=OFF \
    -DWEBP_BUILD_DWEBP=OFF -DWEBP_BUILD_GIF2WEBP=OFF -DWEBP_BUILD_IMG2WEBP=OFF \
    -DWEBP_BUILD_VWEBP=OFF -DWEBP_BUILD_WEBPINFO=OFF -DWEBP_BUILD_WEBPMUX=OFF \
    -DWEBP_BUILD_EXTRAS=OFF
  check_imports "$PREFIX"/bin/libwebp*.dll
}

# Lua 5.4 with upstream's src/Makefile (Debian's patch turns it into a
# libtool build for Linux) as its `mingw` target does, but with the MinGW
# strip and an import library. Debian's other patches (CVE fixes, paths
# for Linux only) stay applied.
build_lua54() {
  cd "$1/src"
  # dpkg-source keeps the unpatched file in .pc/; else take the tarball's.
  if [ -f ../.pc/0001-build-system.patch/src/Makefile ]; then
    cp ../.pc/0001-build-system.patch/src/Makefile Makefile.upstream
  else
    tar -xzOf "$CACHE/dl/lua5.4_${SRC_VERSION%%-*}.orig.tar.gz" \
      --wildcards '*/src/Makefile' >Makefile.upstream
  fi
  local cc="$WCC -std=gnu99"
  make -j"$JOBS" -f Makefile.upstream CC="$cc" \
    LUA_A=lua54.dll LUA_T=lua.exe \
    AR="$cc -shared -static-libgcc -Wl,--out-implib,liblua54.dll.a -o" \
    RANLIB="$HOST-strip --strip-unneeded" \
    SYSCFLAGS=-DLUA_BUILD_AS_DLL SYSLIBS= SYSLDFLAGS="$WLDFLAGS" lua.exe
  # luac needs Lua's internals: upstream links it against a static archive.
  make -j"$JOBS" -f Makefile.upstream CC="$cc" \
    AR="$HOST-ar rcu" RANLIB="$HOST-ranlib" \
    SYSCFLAGS=-DLUA_BUILD_AS_DLL SYSLIBS= SYSLDFLAGS="$WLDFLAGS" \
    LUAC_T=luac.exe luac.exe
  local out=$CACHE/lua54
  rm -rf "$out"
  mkdir -p "$out/include" "$out/lib" "$out/lua"
  cp lua.exe luac.exe lua54.dll "$out/"
  cp liblua54.dll.a "$out/lib/"
  cp lua.h luaconf.h lualib.h lauxlib.h lua.hpp "$out/include/"
  check_imports "$out"/*.exe "$out"/*.dll
  local v=${SRC_VERSION%%-*}
  write_lua_pc lua5.4 "Lua 5.4 for Windows" "$v" "$out" -llua54
  write_lua_pc lua54 "Lua 5.4 for Windows" "$v" "$out" -llua54
}

# LuaJIT 2.1 cross-built as its Makefile documents for MinGW: lua51.dll
# (the DLL LÖVE ships) and luajit.exe. buildvm runs on the build machine.
build_luajit() {
  cd "$1"
  make -j"$JOBS" HOST_CC=gcc CROSS="$HOST-" CC=gcc-posix TARGET_SYS=Windows \
    TARGET_LDFLAGS=-static-libgcc TARGET_SHLDFLAGS=-static-libgcc
  local out=$CACHE/luajit
  rm -rf "$out"
  mkdir -p "$out/include" "$out/lib" "$out/lua/jit"
  "$HOST-strip" --strip-unneeded src/lua51.dll
  "$HOST-strip" src/luajit.exe
  cp src/luajit.exe src/lua51.dll "$out/"
  cp src/libluajit-5.1.dll.a "$out/lib/"
  cp src/libluajit-5.1.dll.a "$out/lib/liblua51.dll.a"
  cp src/lua.h src/luaconf.h src/lualib.h src/lauxlib.h src/lua.hpp src/luajit.h "$out/include/"
  # jit.* modules (luajit -jv, -jdump) are looked up in !\lua\jit.
  cp src/jit/*.lua "$out/lua/jit/"
  check_imports "$out"/*.exe "$out"/*.dll
  write_lua_pc luajit "LuaJIT for Windows" "${SRC_VERSION%%+*}" "$out" -llua51
}

# write_lua_pc NAME DESCRIPTION VERSION DIR LIB: a .pc file for a Lua.
# Windows Lua C modules must link against the Lua DLL's import library.
write_lua_pc() {
  cat >"$PREFIX/lib/pkgconfig/$1.pc" <<EOF
prefix=$4
includedir=\${prefix}/include
libdir=\${prefix}/lib

Name: $1
Description: $2 (imgedit tools/windows/deps.sh)
Version: $3
Cflags: -I\${includedir}
Libs: -L\${libdir} $5
EOF
}

# lua-cjson for one Lua: cjson.dll next to that Lua's exe, where its
# default package.cpath ("!\?.dll") finds it. Same objects as Debian's.
cjson_for() {
  local src=$1 dir=$2 lib=$3 b flags=()
  b=$(mktemp -d)
  if [ -f "$dir/include/luajit.h" ]; then
    # LuaJIT 2.1 declares luaL_setfuncs, which cjson 2.1.0 defines itself
    # (static) for any Lua 5.1: rename cjson's copy, after lauxlib.h.
    printf '#include <lauxlib.h>\n#define luaL_setfuncs cjson_luaL_setfuncs\n' >"$b/luajit-compat.h"
    flags=(-include "$b/luajit-compat.h")
  fi
  "$WCC" -O2 -I"$dir/include" "${flags[@]}" -c "$src/lua_cjson.c" -o "$b/lua_cjson.o"
  "$WCC" -O2 -I"$dir/include" -c "$src/strbuf.c" -o "$b/strbuf.o"
  "$WCC" -O2 -I"$dir/include" -c "$src/fpconv.c" -o "$b/fpconv.o"
  # shellcheck disable=SC2086 # WLDFLAGS is a list of flags
  "$WCC" -shared $WLDFLAGS -o "$dir/cjson.dll" "$b"/*.o -L"$dir/lib" "$lib"
  rm -rf "$b"
  check_imports "$dir/cjson.dll"
}

build_cjson() {
  cjson_for "$1" "$CACHE/lua54" -llua54
  cjson_for "$1" "$CACHE/luajit" -llua51
}

# stb: the headers from Debian's libstb source and libstb.a holding the
# implementation (src/stb_impl.c, as Debian builds libstb), so `-lstb`
# works as on Linux.
build_stb() {
  cd "$1"
  mkdir -p "$PREFIX/include/stb" "$PREFIX/lib/pkgconfig"
  cp stb_image.h stb_image_write.h stb_image_resize.h "$PREFIX/include/stb/"
  # Debian builds libstb with -fwrapv (nothings/stb#741).
  "$WCC" -O2 -fwrapv -I. -c "$ROOT/src/stb_impl.c" -o stb_impl.o
  rm -f "$PREFIX/lib/libstb.a"
  "$HOST-ar" rcs "$PREFIX/lib/libstb.a" stb_impl.o
  cat >"$PREFIX/lib/pkgconfig/stb.pc" <<EOF
prefix=$PREFIX
includedir=\${prefix}/include/stb
libdir=\${prefix}/lib

Name: stb
Description: stb_image, stb_image_write, stb_image_resize for Windows (imgedit tools/windows/deps.sh)
Version: 0.0
Cflags: -I\${includedir}
Libs: -L\${libdir} -lstb
EOF
}

# argparse is pure Lua: Debian's own file, next to both Lua exes ("!\lua\").
build_argparse() {
  local f=/usr/share/lua/5.4/argparse.lua
  [ -f "$f" ] || f=$(dpkg -L lua-argparse | grep '/argparse\.lua$' | sed -n 1p)
  cp "$f" "$CACHE/lua54/lua/argparse.lua"
  cp "$f" "$CACHE/luajit/lua/argparse.lua"
}

# Debian's zlib for MinGW, used as it is: its DLL, headers and .pc go into
# the prefix so one PKG_CONFIG_LIBDIR and one DLL folder cover everything.
install_zlib() {
  local sys=/usr/$HOST
  mkdir -p "$PREFIX/bin" "$PREFIX/include" "$PREFIX/lib/pkgconfig"
  cp -p "$sys/lib/zlib1.dll" "$PREFIX/bin/"
  cp -p "$sys/include/zlib.h" "$sys/include/zconf.h" "$PREFIX/include/"
  cp -p "$sys/lib/libz.dll.a" "$PREFIX/lib/"
  # shellcheck disable=SC2016 # ${prefix} is for pkg-config
  sed -e "s|^prefix=.*|prefix=$PREFIX|" -e 's|^exec_prefix=.*|exec_prefix=${prefix}|' \
    -e 's|^libdir=.*|libdir=${prefix}/lib|' -e 's|^sharedlibdir=.*|sharedlibdir=${prefix}/lib|' \
    -e 's|^includedir=.*|includedir=${prefix}/include|' "$sys/lib/pkgconfig/zlib.pc" |
    write_if_changed "$PREFIX/lib/pkgconfig/zlib.pc"
}

# A folder holding only the static winpthread, as libpthread.a too. The
# posix-threads gcc always adds -lpthread at the end of a link (and code
# with thread-locals, like stb_image's, needs it through libgcc's emutls);
# with -L to this folder, that -lpthread finds the static library before
# the sysroot's libpthread.dll.a, so nothing needs libwinpthread-1.dll.
install_static_winpthread() {
  local d=$PREFIX/lib/static-winpthread
  mkdir -p "$d"
  cmp -s "/usr/$HOST/lib/libwinpthread.a" "$d/libpthread.a" ||
    cp "/usr/$HOST/lib/libwinpthread.a" "$d/libpthread.a"
  cmp -s "/usr/$HOST/lib/libwinpthread.a" "$d/libwinpthread.a" ||
    cp "/usr/$HOST/lib/libwinpthread.a" "$d/libwinpthread.a"
}

# The wine that runs 64-bit programs with wine64 alone (no i386 packages):
# Debian's wine64 package has no `wine` command, only /usr/lib/wine/wine64.
find_wine() {
  local w
  for w in "${IMGEDIT_WINE:-}" wine64 /usr/lib/wine/wine64 wine; do
    if [ -n "$w" ] && command -v "$w" >/dev/null 2>&1; then
      command -v "$w"
      return 0
    fi
  done
  die "no wine64 found (apt-get install wine64)"
}

# A wine prefix of our own, made once: the first start takes a while.
setup_wine() {
  WINE=$(find_wine)
  export WINEPREFIX=$CACHE/wine WINEDEBUG=-all
  unset DISPLAY
  if [ ! -e "$WINEPREFIX/.imgedit-ready" ]; then
    local t=$EPOCHREALTIME
    rm -rf "$WINEPREFIX"
    # No Mono or Gecko install prompts: nothing here needs them.
    if ! WINEDLLOVERRIDES="mscoree,mshtml=" "$WINE" wineboot -i >"$CACHE/logs/wine.log" 2>&1; then
      cat "$CACHE/logs/wine.log" >&2
      die "wineboot failed"
    fi
    touch "$WINEPREFIX/.imgedit-ready"
    say "wine prefix: first start took $(since "$t")s"
  fi
}

# env.sh (for sh) and env.mk (for make): what a cross build of a Lua C
# module needs, and how to run the results under wine. Same names in both.
write_env() {
  local vars=(
    "IMGEDIT_WIN_CACHE=$CACHE"
    "WIN_HOST=$HOST"
    "WIN_CC=$WCC"
    "WIN_AR=$HOST-ar"
    "WIN_STRIP=$HOST-strip"
    "WIN_PREFIX=$PREFIX"
    "WIN_PKG_CONFIG_LIBDIR=$PREFIX/lib/pkgconfig"
    "WIN_DLL_DIR=$PREFIX/bin"
    "WIN_DLLS=libcurl-4.dll libpng16.dll libwebp.dll zlib1.dll"
    "WIN_RUNTIME_LDFLAGS=-static-libgcc -L$PREFIX/lib/static-winpthread"
    "WIN_LUA54_DIR=$CACHE/lua54"
    "WIN_LUA54=$CACHE/lua54/lua.exe"
    "WIN_LUA54_CFLAGS=-I$CACHE/lua54/include"
    "WIN_LUA54_LIBS=-L$CACHE/lua54/lib -llua54"
    "WIN_LUAJIT_DIR=$CACHE/luajit"
    "WIN_LUAJIT=$CACHE/luajit/luajit.exe"
    "WIN_LUAJIT_CFLAGS=-I$CACHE/luajit/include"
    "WIN_LUAJIT_LIBS=-L$CACHE/luajit/lib -llua51"
    "WINE=$WINE"
  )
  local wine_vars=(
    "WINEPREFIX=$CACHE/wine"
    "WINEDEBUG=-all"
    "WINEPATH=Z:${PREFIX//\//\\}\\bin"
  )
  local v
  {
    echo "# Written by imgedit's tools/windows/deps.sh: . this file."
    echo "# Link with WIN_RUNTIME_LDFLAGS: no libgcc_s_seh-1.dll, no"
    echo "# libwinpthread-1.dll. WIN_DLLS (in WIN_DLL_DIR) go beside core.dll."
    for v in "${vars[@]}"; do printf "%s='%s'\n" "${v%%=*}" "${v#*=}"; done
    for v in "${wine_vars[@]}"; do printf "export %s='%s'\n" "${v%%=*}" "${v#*=}"; done
  } | write_if_changed "$CACHE/env.sh"
  {
    echo "# Written by imgedit's tools/windows/deps.sh: include this file."
    echo "# Link with WIN_RUNTIME_LDFLAGS: no libgcc_s_seh-1.dll, no"
    echo "# libwinpthread-1.dll. WIN_DLLS (in WIN_DLL_DIR) go beside core.dll."
    for v in "${vars[@]}"; do printf '%s = %s\n' "${v%%=*}" "${v#*=}"; done
    for v in "${wine_vars[@]}"; do printf 'export %s = %s\n' "${v%%=*}" "${v#*=}"; done
  } | write_if_changed "$CACHE/env.mk"
}

main() {
  local t0=$EPOCHREALTIME
  mkdir -p "$CACHE/logs" "$CACHE/stamps" "$PREFIX/lib/pkgconfig" "$PREFIX/bin"
  # One run at a time per cache (CI and a developer may share it).
  exec 9>"$CACHE/.lock"
  flock 9
  say "cache: $CACHE"
  if [ "$FORCE" = yes ]; then
    # From scratch: no file of an earlier recipe stays in the prefix.
    rm -rf "$PREFIX" "$CACHE/lua54" "$CACHE/luajit" "$CACHE/stamps"
    mkdir -p "$CACHE/stamps" "$PREFIX/lib/pkgconfig" "$PREFIX/bin"
  fi
  ensure_packages
  command -v "$WCC" >/dev/null || die "$WCC not found (gcc-mingw-w64-x86-64-posix)"
  TOOLCHAIN=$(toolchain_id)
  setup_apt
  load_versions curl libpng1.6 libwebp libstb lua5.4 luajit lua-cjson
  install_zlib
  install_static_winpthread
  write_toolchain
  part curl curl
  part libpng libpng1.6
  part libwebp libwebp
  part stb libstb
  part lua54 lua5.4
  part luajit luajit
  part cjson lua-cjson lua54 luajit
  part argparse - lua54 luajit
  setup_wine
  write_env
  if [ "$CHECK" = yes ]; then
    local t=$EPOCHREALTIME
    "$HERE/check.sh"
    say "checks: $(since "$t")s"
  fi
  say "done in $(since "$t0")s; flags in $CACHE/env.sh and $CACHE/env.mk"
}

main
