#!/bin/sh
# Install the Debian packages the test suite runs for real (redis-server for the Redis session store, chromium for
# the userscript tests in tests/browser, Apache with mod_passenger and a Python 3.11 venv for the cPanel-style
# deployment tests in tests/deploy, shellcheck for the shell scripts, openssl to make certificates for the https://
# upstream tests, Node.js and npm for the Node SDK client tests, haproxy for the load balancer in front of several
# gateway instances in tests/test_fleet_haproxy.py).
# Run by `make test`; installs only what is missing, and only where it can (root with apt-get).
set -eu
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -x /usr/sbin/apache2 ] || missing="$missing apache2"
[ -e /usr/lib/apache2/modules/mod_passenger.so ] || missing="$missing libapache2-mod-passenger"
# Passenger 6.0.17's WSGI loader needs Python 3.11; Debian ships ensurepip (what `venv` needs) apart from Python.
/usr/bin/python3.11 -c "import ensurepip" >/dev/null 2>&1 || missing="$missing python3.11-venv"
command -v shellcheck >/dev/null 2>&1 || missing="$missing shellcheck"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
# The official openai Node SDK in tests/test_client_matrix.py (npm ci installs it from the registry).
command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm"
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || missing="$missing haproxy"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing:$missing"
  apt-get update -qq
  # shellcheck disable=SC2086 # one word per package
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
  echo "the tests need these Debian packages:$missing (sudo apt-get install$missing)" >&2
  exit 1
fi
