#!/bin/sh
# Install the Debian packages the test suite runs for real (redis-server for the Redis session store, chromium for
# the userscript tests in tests/browser).
# Run by `make test`; installs only what is missing, and only where it can (root with apt-get).
set -eu
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
  echo "the tests need these Debian packages:$missing (sudo apt-get install$missing)" >&2
  exit 1
fi
