#!/usr/bin/env sh
# Best effort: Debian's headless Chromium, which the report and web-page tests render in.
# Never fails: without it those tests skip and say why.
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (Debian package) for the browser tests"
  # bounded: a mirror that does not answer must not hold up the tests
  (timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 \
     apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "could not install chromium: the browser tests will skip"
else
  echo "chromium not found (install it with: sudo apt-get install -y chromium chromium-driver);" \
       "the browser tests will skip"
fi
exit 0
