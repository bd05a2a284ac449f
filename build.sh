#!/bin/sh
# Install what imgedit needs on Debian 12 (or Ubuntu), then run a make target.
#   ./build.sh demo    build and run the demo pipeline (emulator, or the service with IMGEDIT_API_KEY)
#   ./build.sh test    build from nothing and run every test
set -e
cd "$(dirname "$0")"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v make >/dev/null 2>&1 || ! command -v cc >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends make gcc libc6-dev >/dev/null
fi
# The tests also run against real network servers: their packages too.
if [ "$1" = test ]; then make --no-print-directory deps-test; else make --no-print-directory deps; fi
exec make --no-print-directory "$@"
