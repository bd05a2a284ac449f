# imgedit: plain GNU make, flags from pkg-config.
#
# The Lua to build for: LUA_VERSION=5.4 (the default), 5.3 or 5.1; LUA=luajit;
# or an interpreter by path (LuaRocks passes LUA=/usr/bin/lua5.1 and
# LUA_INCDIR), whose version is asked of it. Each builds into its own
# folder, build/lua5.4, build/luajit ..., which records what it was made for.
ifeq ($(origin LUA),undefined)
LUA_VERSION ?= 5.4
LUA          = lua$(LUA_VERSION)
else ifeq ($(notdir $(LUA)),luajit)
LUA_JIT      = yes
else
LUA_JIT     := $(shell $(LUA) -e 'io.write(jit and "yes" or "")' 2>/dev/null)
endif
ifeq ($(LUA_JIT),yes)
LUA_VERSION  = 5.1
LUA_ID       = luajit
LUA_PC       = luajit
else
LUA_VERSION ?= $(shell $(LUA) -e 'io.write((_VERSION:gsub("^Lua ", "")))' 2>/dev/null)
LUA_ID       = lua$(LUA_VERSION)
LUA_PC       = lua$(LUA_VERSION)
endif
CC          ?= cc
PKG_CONFIG  ?= pkg-config
PREFIX      ?= /usr/local
DESTDIR     ?=
LUA_LMOD    ?= $(PREFIX)/share/lua/$(LUA_VERSION)
LUA_CMOD    ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
BINDIR      ?= $(PREFIX)/bin

CFLAGS   ?= -O2 -g
WARN      = -Wall -Wextra -Werror -pedantic -Wmissing-prototypes -Wstrict-prototypes -Wshadow
# LuaRocks passes LUA_INCDIR; otherwise pkg-config finds Lua. Every question
# to pkg-config is quiet: before `make deps` it may not be there yet.
ifdef LUA_INCDIR
LUA_CFLAGS = -I$(LUA_INCDIR)
else
LUA_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(LUA_PC) 2>/dev/null)
endif
# OpenSSL's libcrypto hashes and libssl reads TLS verdicts; Windows has CNG
# and Schannel instead (and its Lua modules link against the Lua DLL).
ifeq ($(TARGET_OS),windows)
SSL_PC      =
SYS_LIBS    = -lws2_32 -lbcrypt -lshell32
else
SSL_PC      = libssl libcrypto
SYS_LIBS    = -lm -pthread
endif
# stb: Debian's libstb (pkg-config stb); elsewhere STB_INCDIR names a folder
# with the headers, and their implementation is compiled in (src/stb_impl.c).
ifdef STB_INCDIR
STB_PC      =
STB_CFLAGS  = -isystem $(STB_INCDIR)
STB_SRC     = src/stb_impl.c
else
STB_PC      = stb
endif
DEP_CFLAGS := $(LUA_CFLAGS) $(STB_CFLAGS) $(shell $(PKG_CONFIG) --cflags libcurl $(STB_PC) libwebp libpng $(SSL_PC) 2>/dev/null)
EMU_CFLAGS := $(shell $(PKG_CONFIG) --cflags libmicrohttpd 2>/dev/null)
CORE_LIBS  := $(shell $(PKG_CONFIG) --libs libcurl $(STB_PC) libwebp libpng $(SSL_PC) 2>/dev/null) $(SYS_LIBS)
EMU_LIBS   := $(shell $(PKG_CONFIG) --libs libmicrohttpd 2>/dev/null) -lpthread
# Lua modules link without -llua: the interpreter exports its symbols.
LDFLAGS  ?=
SHARED    = -shared
SO        = so
PLAT_SRC  = src/plat_posix.c

# The system's own calls. Linux: its own where they help (signalfd,
# inotify, POLLRDHUP, close-on-exec at creation). PORTABLE=1: the plain
# POSIX path beside each, none of Linux's compiled in: what macOS and the
# BSDs build, tested here on Linux, in a build folder of its own.
UNAME_S := $(shell uname -s 2>/dev/null)
ifeq ($(UNAME_S),Darwin)
PORTABLE  = 1
FEATURES  = -D_DARWIN_C_SOURCE
# As Lua modules do on macOS: a bundle, Lua's symbols found at load.
SHARED    = -bundle -undefined dynamic_lookup
else ifdef PORTABLE
FEATURES  = -D_XOPEN_SOURCE=700 -D_DEFAULT_SOURCE
else
FEATURES  = -D_GNU_SOURCE
endif
ifdef PORTABLE
FEATURES += -DIE_PORTABLE
BUILD_SUFFIX = -portable
endif
# Windows (cross-built by tools/windows/build.sh with MinGW-w64): DLLs,
# linked against the Lua DLL, wide-character paths and Windows' own calls.
ifeq ($(TARGET_OS),windows)
FEATURES  = -D_WIN32_WINNT=0x0602 -D__USE_MINGW_ANSI_STDIO=1
SO        = dll
PLAT_SRC  = src/plat_win.c
BUILD_SUFFIX = -windows
endif
ALL_CFLAGS = -std=c99 $(FEATURES) $(if $(filter windows,$(TARGET_OS)),,-fPIC) -fvisibility=hidden $(WARN) \
             $(DEP_CFLAGS) $(CFLAGS)

CORE_SRC = src/core.c src/inspect.c src/codec.c src/fileio.c src/appender.c src/meta.c src/meta_webp.c src/watch.c src/signal.c src/pixels.c src/buffer.c src/composite.c src/mask.c src/sse.c src/net.c src/record.c src/transfer.c src/hub.c src/http.c src/xfer.c src/worker.c src/decoder.c src/procs.c \
           src/sha256.c $(PLAT_SRC) $(STB_SRC)
EMU_SRC  = src/emulator/module.c src/emulator/server.c src/emulator/bridge.c src/emulator/render.c $(PLAT_SRC)
HDRS     = src/imgedit.h src/sse.h src/compat.h src/http.h src/meta.h src/platform.h
EMU_HDRS = $(HDRS) src/emulator/emulator.h

BUSTED  ?= $(LUA) /usr/bin/busted

.PHONY: FORCE windows test-windows rock test-quick soak test-tsan testhooks all deps deps-test deps-hardening deps-all test-all test test-asan test-valgrind demo bench bench-deps install uninstall clean check format fuzz fuzz-smoke

BUILD ?= build/$(LUA_ID)$(BUILD_SUFFIX)

# The emulator needs libmicrohttpd; a client-only build (no libmicrohttpd
# found) skips it. The tests, the demo and the CLI's emulate need it.
HAVE_MHD := $(shell $(PKG_CONFIG) --exists libmicrohttpd 2>/dev/null && echo yes)
MODULES   = $(BUILD)/imgedit/core.$(SO) $(if $(HAVE_MHD),$(BUILD)/imgedit/emulator/core.$(SO))

all: $(MODULES)
ifneq ($(HAVE_MHD),yes)
	@echo "imgedit: libmicrohttpd not found: built the client only (no imgedit.emulator.core)"
endif

# What a build was made for: the interpreter, its headers and the flags. A
# build whose record differs is made again (no `make clean` to switch).
BUILT_FOR = lua=$(LUA) version=$(LUA_VERSION) cflags=$(strip $(LUA_CFLAGS) $(FEATURES) $(CFLAGS) $(LDFLAGS) $(LIBS))$(if \
            $(DEPS_ID), deps=$(DEPS_ID))
$(BUILD)/built-for: FORCE
	@mkdir -p $(@D)
	@if [ "$$(cat $@ 2>/dev/null)" != '$(BUILT_FOR)' ]; then printf '%s\n' '$(BUILT_FOR)' > $@; fi
FORCE:

$(BUILD)/imgedit/core.$(SO): $(CORE_SRC) $(HDRS) $(BUILD)/built-for
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(SHARED) -o $@ $(CORE_SRC) $(LDFLAGS) $(CORE_LIBS) $(LIBS)

$(BUILD)/imgedit/emulator/core.$(SO): $(EMU_SRC) $(EMU_HDRS) $(BUILD)/built-for
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(EMU_CFLAGS) $(SHARED) -o $@ $(EMU_SRC) $(LDFLAGS) $(EMU_LIBS)

# Test-only C hooks (never installed): imgedit_test.sse drives the SSE
# parser, imgedit_test.proc forks.
testhooks: $(BUILD)/imgedit_test/sse.so $(BUILD)/imgedit_test/proc.so

$(BUILD)/imgedit_test/proc.so: tests/fuzz/proc_hook.c $(HDRS) $(BUILD)/built-for
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(SHARED) -o $@ tests/fuzz/proc_hook.c $(LDFLAGS)

$(BUILD)/imgedit_test/sse.so: tests/fuzz/sse_hook.c src/sse.c $(HDRS) $(BUILD)/built-for
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(SHARED) -o $@ tests/fuzz/sse_hook.c src/sse.c $(LDFLAGS)

# Debian packages the build, the tests and the demo need; quiet when present.
DEB_PKGS = gcc make pkg-config liblua5.4-dev lua5.4 libcurl4-openssl-dev lua-cjson libstb-dev \
           libwebp-dev libpng-dev libmicrohttpd-dev libssl-dev lua-busted lua-argparse libjpeg-turbo-progs luarocks
# Installs the Debian packages in $(1) that are missing; quiet when none are.
define install_missing
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	  grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ] && [ "$$(id -u)" != 0 ] && ! command -v sudo >/dev/null 2>&1; then \
	  echo "imgedit: these Debian packages are missing:" $$missing; \
	  echo "imgedit: not root and no sudo: ask an administrator to run" \
	    "apt-get install --no-install-recommends" $$missing; \
	elif [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps:
	$(call install_missing,$(DEB_PKGS))

# The real network components the tests run against (a TLS and HTTP/2 front,
# a forward proxy, openssl for their certificates). For the tests only, and
# optional: where they cannot be installed, those tests are skipped and counted.
NET_PKGS = nghttp2-proxy tinyproxy openssl
# A browser, to render the contact sheet the way a person sees it.
BROWSER_PKGS = chromium
# The hosts with event loops the pollable client is tried in: cqueues and
# luv, Neovim (LuaJIT, libuv) and nginx with its Lua module (LuaJIT).
HOST_PKGS = lua-cqueues lua-luv neovim nginx-core libnginx-mod-http-lua luajit2 libluajit2-5.1-dev
deps-test: deps
	-$(call install_missing,$(NET_PKGS))
	-$(call install_missing,$(BROWSER_PKGS))
	-$(call install_missing,$(HOST_PKGS))

# What the hardening targets add: clang and libFuzzer's runtime, valgrind.
deps-hardening: deps-test
	$(call install_missing,clang libclang-rt-14-dev valgrind)

# The suite and the demo load this build only, and tell the children the
# tests start which interpreter and build to use.
IMGEDIT_TEST_MAKEVARS ?= $(if $(PORTABLE),PORTABLE=1)
ENV = LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='$(BUILD)/?.so;;' IMGEDIT_TEST_LUA='$(LUA)' \
      IMGEDIT_TEST_BUILD='$(BUILD)' IMGEDIT_TEST_LUAV='$(LUA_VERSION)' IMGEDIT_TEST_MAKEVARS='$(IMGEDIT_TEST_MAKEVARS)'

test: all testhooks
	@$(ENV) $(BUSTED) -o tests/summary.lua tests

# The fast loop while working (under a minute here): the specs of the core,
# the client, jobs, streams and rules; not the soak, batches, the real
# network, forks and exits, LuaRocks, LÖVE, the browser or the examples,
# which make test runs.
QUICK_SPECS = codec inspect mask rules careless watch lineage client stream hardening preserve frames billing \
              providers docs
test-quick: all testhooks
	@$(ENV) $(BUSTED) -o tests/summary.lua $(foreach s,$(QUICK_SPECS),tests/$(s)_spec.lua)

# Every supported Lua: 5.4, 5.3, 5.1 and LuaJIT 2.1, each built into its own
# folder and tested with its own interpreter (busted runs on all of them).
# LuaJIT is Debian's luajit2 (OpenResty's branch): nginx's Lua module needs
# it, and luajit would replace it; LÖVE and Neovim take either.
LUA_TARGETS = 5.4 5.3 5.1 luajit
deps-all: deps-test
	$(call install_missing,lua5.3 liblua5.3-dev lua5.1 liblua5.1-0-dev luajit2 libluajit2-5.1-dev love xvfb xauth)

test-all:
	@set -e; for t in $(LUA_TARGETS); do \
	  if [ $$t = luajit ]; then vars="LUA=luajit"; lua=luajit; luav=5.1; \
	  else vars="LUA_VERSION=$$t"; lua=lua$$t; luav=$$t; fi; \
	  echo "== $$lua"; \
	  $(MAKE) --no-print-directory $$vars all testhooks >/dev/null; \
	  LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH="build/$$lua/?.so;;" IMGEDIT_TEST_LUA=$$lua \
	    IMGEDIT_TEST_BUILD=build/$$lua IMGEDIT_TEST_LUAV=$$luav IMGEDIT_TEST_MAKEVARS="$$vars" \
	    $$lua /usr/bin/busted --cpath="build/$$lua/?.so" --lpath='lua/?.lua;lua/?/init.lua;tests/?.lua' \
	    -o tests/summary.lua tests; \
	done

# Windows, cross-built here with MinGW-w64 from Debian's source packages
# (cached outside the repository, in ~/.cache/imgedit-windows), then tried
# under Wine against the emulator on this side: build/windows/imgedit-windows.
windows:
	@bash tools/windows/build.sh

test-windows: all windows
	@$(ENV) $(BUSTED) -o tests/summary.lua -p _check tests/windows

# The whole suite against an ASan+UBSan build of the C code. The sanitizer
# runtimes are preloaded into the stock interpreter; any report fails the run.
ASAN_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
ASAN_RT    = $(shell $(CC) -print-file-name=libasan.so) $(shell $(CC) -print-file-name=libubsan.so)
# intercept_tls_get_addr=0: GCC 12's sanitizer runtime misreads the dynamic
# TLS that a second thread gets in libstb (its failure reason is
# thread-local), and LeakSanitizer's tracer then crashes at exit now and
# then ("Tracer caught signal 11"), reporting no leak.
test-asan: all testhooks
	@$(MAKE) --no-print-directory BUILD=build/asan CFLAGS="$(ASAN_FLAGS)" all testhooks >/dev/null
	@LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/asan/?.so;;' IMGEDIT_TEST_SLOW=2 \
	  LD_PRELOAD="$(ASAN_RT)" ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:exitcode=99:intercept_tls_get_addr=0 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  $(BUSTED) --cpath='build/asan/?.so' -o tests/summary.lua tests

# The network thread's specs under a ThreadSanitizer build of the C code
# (the runtime preloaded into the stock interpreter; any report fails).
TSAN_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=thread
TSAN_RT    = $(shell $(CC) -print-file-name=libtsan.so)
TSAN_SPECS = tests/money_spec.lua tests/process_spec.lua tests/frames_spec.lua tests/stream_spec.lua tests/soak_spec.lua \
             tests/pollable_spec.lua tests/preserve_spec.lua
test-tsan: all testhooks
	@$(MAKE) --no-print-directory BUILD=build/tsan CFLAGS="$(TSAN_FLAGS)" all testhooks >/dev/null
	@LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/tsan/?.so;;' IMGEDIT_TEST_SLOW=3 \
	  LD_PRELOAD="$(TSAN_RT)" TSAN_OPTIONS=halt_on_error=1:exitcode=66:second_deadlock_stack=1 \
	  $(BUSTED) --cpath='build/tsan/?.so' -o tests/summary.lua $(TSAN_SPECS)

# The money soak, longer than make test's (SOAK_SECONDS each), under the
# ASan+UBSan build, then under the ThreadSanitizer build.
SOAK_SECONDS ?= 300
soak: all testhooks
	@$(MAKE) --no-print-directory BUILD=build/asan CFLAGS="$(ASAN_FLAGS)" all testhooks >/dev/null
	@$(MAKE) --no-print-directory BUILD=build/tsan CFLAGS="$(TSAN_FLAGS)" all testhooks >/dev/null
	@echo "== ASan+UBSan"; LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/asan/?.so;;' IMGEDIT_TEST_SLOW=2 \
	  IMGEDIT_SOAK_SECONDS=$(SOAK_SECONDS) LD_PRELOAD="$(ASAN_RT)" \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:exitcode=99:intercept_tls_get_addr=0 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  $(BUSTED) --cpath='build/asan/?.so' -o tests/summary.lua tests/soak_spec.lua
	@echo "== ThreadSanitizer"; LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/tsan/?.so;;' IMGEDIT_TEST_SLOW=3 \
	  IMGEDIT_SOAK_SECONDS=$(SOAK_SECONDS) LD_PRELOAD="$(TSAN_RT)" \
	  TSAN_OPTIONS=halt_on_error=1:exitcode=66:second_deadlock_stack=1 \
	  $(BUSTED) --cpath='build/tsan/?.so' -o tests/summary.lua tests/soak_spec.lua

# The whole suite under valgrind's memcheck: zero errors, zero definite leaks.
test-valgrind: all testhooks
	@$(ENV) IMGEDIT_TEST_SLOW=30 valgrind -q --error-exitcode=99 --leak-check=full \
	  --show-leak-kinds=definite --errors-for-leak-kinds=definite --trace-children=no \
	  $(BUSTED) -o tests/summary.lua tests

demo: all
	@$(ENV) $(LUA) examples/pipeline.lua out

# The npm SDK is only a reference for the benchmarks; skipped when npm is absent.
bench-deps:
	@if command -v npm >/dev/null 2>&1 && [ ! -d bench/node_modules/openai ]; then \
	  npm install --prefix bench --no-audit --no-fund --loglevel=error >/dev/null || \
	  echo "npm install failed: the openai SDK rows will read n/a"; fi

bench: all bench-deps
	@$(ENV) LUA_PATH="lua/?.lua;lua/?/init.lua;./?.lua;;" $(LUA) bench/run.lua

# libFuzzer targets (clang, ASan, UBSan): make fuzz builds them, fuzz-smoke
# runs each for FUZZ_SECONDS from the seed corpus in tests/fuzz/corpus/.
FUZZ_CC    ?= clang
FUZZ_FLAGS  = -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -D_GNU_SOURCE \
              -fvisibility=hidden $(DEP_CFLAGS)
FUZZ_LUA    = $(shell $(PKG_CONFIG) --libs $(LUA_PC))
FUZZERS     = build/fuzz/sse build/fuzz/inspect build/fuzz/b64 build/fuzz/answer build/fuzz/mask build/fuzz/xmp

fuzz: $(FUZZERS)

build/fuzz/sse: tests/fuzz/fuzz_sse.c src/sse.c src/sse.h
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ tests/fuzz/fuzz_sse.c src/sse.c

build/fuzz/inspect: tests/fuzz/fuzz_inspect.c src/inspect.c src/core.c $(CORE_SRC) $(HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ tests/fuzz/fuzz_inspect.c $(CORE_SRC) $(CORE_LIBS) $(FUZZ_LUA)

build/fuzz/b64 build/fuzz/answer build/fuzz/mask build/fuzz/xmp: tests/fuzz/fuzz_lua.c $(CORE_SRC) $(HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) \
	  -DTARGET_CODE=$(if $(findstring b64,$@),0,$(if $(findstring answer,$@),1,$(if $(findstring xmp,$@),3,2))) \
	  -o $@ tests/fuzz/fuzz_lua.c $(CORE_SRC) $(CORE_LIBS) $(FUZZ_LUA)

FUZZ_SECONDS ?= 30
fuzz-smoke: fuzz
	@for f in $(FUZZERS); do n=$$(basename $$f); mkdir -p build/fuzz/corpus-$$n; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 -artifact_prefix=build/fuzz/crash-$$n- \
	    build/fuzz/corpus-$$n tests/fuzz/corpus/$$n > build/fuzz/$$n.log 2>&1 \
	    || { tail -30 build/fuzz/$$n.log; echo "fuzz $$n: FAILED"; exit 1; }; \
	  echo "fuzz $$n: $$(grep -o 'stat::number_of_executed_units: [0-9]*' build/fuzz/$$n.log | grep -o '[0-9]*') runs," \
	    "$$(grep -o 'cov: [0-9]*' build/fuzz/$$n.log | tail -1), no crash"; done

check:
	cppcheck --error-exitcode=1 --enable=warning,performance,portability --inline-suppr \
	  --suppress=missingIncludeSystem -q -D__GNUC__ -DLLONG_MAX=9223372036854775807LL $(LUA_CFLAGS) src

format:
	clang-format -i src/*.c src/*.h src/emulator/*.c src/emulator/*.h tests/fuzz/*.c

# The installed command names the interpreter it was built for and, with
# BIN_PATHS=yes (LuaRocks, which wraps its commands, passes it empty), the
# folders it was installed into: it works from any prefix, $$HOME/.local too.
BIN_PATHS ?= yes
BIN_LPATH  = $(LUA_LMOD)/?.lua;$(LUA_LMOD)/?/init.lua
BIN_CPATH  = $(LUA_CMOD)/?.so
install: all
	install -d $(DESTDIR)$(LUA_LMOD)/imgedit/emulator $(DESTDIR)$(LUA_CMOD)/imgedit $(DESTDIR)$(BINDIR)
	install -m 644 lua/imgedit/*.lua $(DESTDIR)$(LUA_LMOD)/imgedit/
	install -m 644 lua/imgedit/emulator/*.lua $(DESTDIR)$(LUA_LMOD)/imgedit/emulator/
	install -m 755 $(BUILD)/imgedit/core.so $(DESTDIR)$(LUA_CMOD)/imgedit/
ifeq ($(HAVE_MHD),yes)
	install -d $(DESTDIR)$(LUA_CMOD)/imgedit/emulator
	install -m 755 $(BUILD)/imgedit/emulator/core.so $(DESTDIR)$(LUA_CMOD)/imgedit/emulator/
endif
	sed -e '1s|.*|#!/usr/bin/env $(LUA)|' \
	  $(if $(BIN_PATHS),-e '1a package.path = "$(BIN_LPATH);" .. package.path' \
	  -e '1a package.cpath = "$(BIN_CPATH);" .. package.cpath') bin/imgedit > $(DESTDIR)$(BINDIR)/imgedit
	chmod 755 $(DESTDIR)$(BINDIR)/imgedit
ifeq ($(DESTDIR)$(BIN_PATHS),yes)
	@$(LUA) -e 'os.exit(package.path:find("$(LUA_LMOD)/?.lua", 1, true) and 0 or 1)' || { \
	  echo "imgedit: $(LUA_LMOD) is not on $(LUA)'s default path; for require \"imgedit\" in your scripts, add to your shell's profile:"; \
	  echo "  export LUA_PATH='$(BIN_LPATH);;' LUA_CPATH='$(BIN_CPATH);;'"; }
	@case ":$$PATH:" in *":$(BINDIR):"*) ;; *) echo "imgedit: $(BINDIR) is not on your PATH; add it:" \
	  "export PATH=\"$(BINDIR):\$$PATH\"";; esac
endif

# A source rock of this tree: build/rock/imgedit-V-1.src.rock (its rockspec
# names the tarball beside it), installable anywhere with
# `luarocks install ./imgedit-V-1.src.rock`. ROCK_URL: where the tarball
# will be published (default: this folder's file:// url).
ROCK_VERSION := $(shell sed -n 's/^\#define IMGEDIT_VERSION "\(.*\)"/\1/p' src/imgedit.h)
ROCK_DIR      = build/rock
ROCK_TAR      = imgedit-$(ROCK_VERSION).tar.gz
ROCK_URL     ?= file://$(CURDIR)/$(ROCK_DIR)/$(ROCK_TAR)
ROCK_FILES    = Makefile README.md imgedit-scm-1.rockspec src lua bin types docs
rock:
	@rm -rf $(ROCK_DIR) && mkdir -p $(ROCK_DIR)
	tar -czf $(ROCK_DIR)/$(ROCK_TAR) --transform 's,^,imgedit-$(ROCK_VERSION)/,' $(ROCK_FILES)
	sed -e 's|^version = .*|version = "$(ROCK_VERSION)-1"|' \
	  -e 's|^  url = .*|  url = "$(ROCK_URL)", dir = "imgedit-$(ROCK_VERSION)",|' \
	  imgedit-scm-1.rockspec > $(ROCK_DIR)/imgedit-$(ROCK_VERSION)-1.rockspec
	cd $(ROCK_DIR) && luarocks --lua-version=$(LUA_VERSION) pack imgedit-$(ROCK_VERSION)-1.rockspec

uninstall:
	rm -rf $(DESTDIR)$(LUA_LMOD)/imgedit $(DESTDIR)$(LUA_CMOD)/imgedit $(DESTDIR)$(BINDIR)/imgedit

clean:
	rm -rf build build-* out
