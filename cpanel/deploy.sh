#!/usr/bin/env bash
# Deploy or update the LMArena AI Gateway in a cPanel "Setup Python App" application. Safe to run again.
#
# usage: cpanel/deploy.sh [--dry-run] [--app-root DIR] [--venv DIR] [--python PYTHON] [--url PUBLIC_URL]
#
#   --app-root DIR   the application root (default: the folder holding this cpanel/ folder)
#   --venv DIR       the app's virtualenv (default: cPanel's $HOME/virtualenv/<app root under $HOME>/3.11)
#   --python PYTHON  interpreter that creates the virtualenv when it does not exist yet (default: python3.11)
#   --url URL        the gateway's public URL, for the health check and the cron line (default: GATEWAY_PUBLIC_URL)
#   --dry-run        say what would be done, change nothing
#
# What it does, in order: back up storage/ (before anything changes), create/reuse the virtualenv, install
# requirements, write .env from .env.example without touching values already set (generating missing secrets),
# make storage/ and .env private to the app user, check that the app starts, touch tmp/restart.txt, wait for
# /health, check the gateway end to end (`python -m app check`: models, a chat, a stream in pieces, sessions, a
# dry-run clean-up, with the keys in .env), and print the cron line for the clean-up. It exits non-zero when the
# check fails.
set -euo pipefail

DRY_RUN=0
APP_ROOT=""
VENV=""
PYTHON="python3.11"
URL=""
KEEP_BACKUPS=10

die() { echo "deploy: error: $*" >&2; exit 1; }
say() { echo "deploy: $*"; }
run() {
  # Print, then run unless this is a dry run.
  if [ "$DRY_RUN" = 1 ]; then
    echo "deploy: would run: $*"
  else
    "$@"
  fi
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --app-root) APP_ROOT="${2:?--app-root needs a folder}"; shift ;;
    --venv) VENV="${2:?--venv needs a folder}"; shift ;;
    --python) PYTHON="${2:?--python needs an interpreter}"; shift ;;
    --url) URL="${2:?--url needs a URL}"; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

APP_ROOT="$(cd "${APP_ROOT:-$(dirname "$0")/..}" && pwd)"
[ -f "$APP_ROOT/passenger_wsgi.py" ] || die "$APP_ROOT has no passenger_wsgi.py: is it the application root?"
if [ -z "$VENV" ]; then
  case "$APP_ROOT" in
    "$HOME"/*) VENV="$HOME/virtualenv/${APP_ROOT#"$HOME"/}/3.11" ;;
    *) VENV="$APP_ROOT/.venv" ;;
  esac
fi
cd "$APP_ROOT"
umask 077
say "application root $APP_ROOT"
say "virtualenv $VENV"
[ "$DRY_RUN" = 1 ] && say "dry run: nothing will be changed"

# 1. Back up storage/ first: sessions and secrets live there.
if [ -d storage ] && [ -n "$(ls -A storage 2>/dev/null)" ]; then
  stamp="$(date -u +%Y%m%dT%H%M%SZ)"
  run mkdir -p backups
  run tar -czf "backups/storage-$stamp.tar.gz" storage
  [ "$DRY_RUN" = 1 ] || say "backed up storage/ to backups/storage-$stamp.tar.gz"
  if [ "$DRY_RUN" = 0 ]; then
    # Keep the newest few; backups are small but not free on shared hosting quotas.
    find backups -maxdepth 1 -name 'storage-*.tar.gz' -print | sort -r | tail -n +$((KEEP_BACKUPS + 1)) |
      while IFS= read -r old; do rm -f -- "$old"; done
  fi
else
  say "storage/ is empty: nothing to back up"
fi

# 2. Virtualenv (cPanel usually made it already) and requirements.
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: create the app in Setup Python App first, or pass --python"
  run "$PYTHON" -m venv "$VENV"
fi
run "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt

# 3. .env: keep every value already set; add settings new in .env.example; generate missing secrets.
new_secret() {
  if [ -x "$VENV/bin/python" ]; then
    "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))'
  else
    "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))'
  fi
}
env_value() {
  [ -f .env ] || return 0
  sed -n "s/^$1=//p" .env | tail -n 1
}
if [ ! -f .env ]; then
  run cp .env.example .env
  [ "$DRY_RUN" = 1 ] || say "created .env from .env.example"
elif [ "$DRY_RUN" = 0 ]; then
  added=0
  while IFS= read -r line; do
    name="${line%%=*}"
    if ! grep -q "^$name=" .env; then
      printf '%s\n' "$line" >> .env
      added=$((added + 1))
    fi
  done < <(grep -E '^[A-Z][A-Z0-9_]*=' .env.example)
  [ "$added" -gt 0 ] && say "added $added new setting(s) to .env from .env.example"
fi
for name in GATEWAY_ADMIN_KEY GATEWAY_CRON_TOKEN GATEWAY_USERSCRIPT_SECRET GATEWAY_API_KEYS; do
  if [ "$DRY_RUN" = 1 ]; then
    if [ ! -f .env ] || [ -z "$(env_value "$name")" ]; then say "would generate $name"; fi
    continue
  fi
  if [ -z "$(env_value "$name")" ]; then
    value="$(new_secret)"
    [ "$name" = GATEWAY_API_KEYS ] && value="sk-gw-$value"
    if grep -q "^$name=" .env; then
      tmp="$(mktemp .env.XXXXXX)"
      awk -v name="$name" -v value="$value" 'index($0, name "=") == 1 { print name "=" value; next } { print }' \
        .env > "$tmp"
      mv -- "$tmp" .env
    else
      printf '%s=%s\n' "$name" "$value" >> .env
    fi
    say "generated $name (stored in .env)"
  fi
done

# 4. Private data stays private: only the app user may read .env and storage/.
run mkdir -p storage tmp
run chmod 700 storage
run chmod 600 .env
if [ -d backups ]; then run chmod 700 backups; fi
if [ "$DRY_RUN" = 0 ]; then
  find storage -type f -exec chmod 600 {} +
fi

# 5. Does the app start with this configuration? (A bad setting names itself here, not in an error page.)
if [ "$DRY_RUN" = 0 ]; then
  if ! (cd "$APP_ROOT" && "$VENV/bin/python" -c 'import passenger_wsgi' 2>&1 | tail -n 5 >&2; exit "${PIPESTATUS[0]}"); then
    die "the app does not start with this configuration (see above); Passenger was not restarted"
  fi
  say "the app starts with this configuration"
fi

# 6. Restart: Passenger restarts the app on its next request after tmp/restart.txt changes.
run touch tmp/restart.txt
[ "$DRY_RUN" = 1 ] || say "touched tmp/restart.txt: Passenger restarts the app on its next request"

# 7. Health check over HTTP, when the public URL is known (waits for Passenger to restart the app).
URL="${URL:-$(env_value GATEWAY_PUBLIC_URL)}"
URL="${URL%/}"
checked=skipped
if [ -n "$URL" ] && [ "$DRY_RUN" = 0 ]; then
  ok=0
  for _ in 1 2 3 4 5; do
    if body="$(curl -fsS -m 20 "$URL/health" 2>&1)"; then ok=1; break; fi
    sleep 3
  done
  if [ "$ok" = 1 ]; then
    say "health: $body"
  else
    say "health check of $URL/health failed: $body"
    say "see Passenger's log (cPanel: the app's stderr.log) for the reason"
  fi
  # 8. The smoke check, with the keys in .env (from the environment, so they stay out of the process list).
  #    A stream that arrives in one lump means mod_deflate holds it back: the check prints the .htaccess fix.
  say "checking $URL end to end:"
  keys="$(env_value GATEWAY_API_KEYS)"
  if CHECK_KEY="${keys%%,*}" CHECK_ADMIN_KEY="$(env_value GATEWAY_ADMIN_KEY)" \
    CHECK_CRON_TOKEN="$(env_value GATEWAY_CRON_TOKEN)" "$VENV/bin/python" -m app check "$URL"; then
    checked=passed
  else
    checked=failed
  fi
else
  say "no public URL (--url or GATEWAY_PUBLIC_URL): skipped the HTTP health check and the smoke check"
fi

# 9. The cron job for session clean-up.
token="$(env_value GATEWAY_CRON_TOKEN)"
say "add this cron job (cPanel > Cron Jobs), e.g. twice an hour:"
echo "*/30 * * * * curl -fsS -m 60 -H \"X-Cron-Token: ${token:-<GATEWAY_CRON_TOKEN>}\" ${URL:-https://your.domain/app}/cron/cleanup >/dev/null"
if [ "$checked" = failed ]; then
  # Keys set in Setup Python App's environment variables win over .env: then run the check with those.
  die "deployed, but the check of $URL failed (see above); run it again with: $VENV/bin/python -m app check $URL --key <a client key> --admin-key <admin key> --cron-token <cron token>"
fi
say "done"
