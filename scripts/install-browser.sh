#!/usr/bin/env bash
# The headless browser for `lorafuse serve`'s browser test (tests/serve_browser.rs): Debian's
# chromium and its WebDriver server, chromedriver. Needs root (apt-get); does nothing when both
# are there.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
