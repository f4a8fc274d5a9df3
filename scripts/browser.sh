#!/usr/bin/env bash
# Makes sure the browser test has its parts: Debian's Chromium and playwright-core (which drives
# it; it never downloads a browser of its own) in a cache outside the repository. Prints the
# node_modules directory. Idempotent: later runs reuse what is there.
set -euo pipefail

playwright_version=1.64.1
cache=${CLUSTERAUDIT_CACHE:-$HOME/.cache/clusteraudit}/browser/playwright-core-$playwright_version

if ! command -v chromium >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser test" >&2
    if [ "$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >&2
fi

if [ ! -f "$cache/node_modules/playwright-core/package.json" ]; then
    echo "installing playwright-core $playwright_version into $cache" >&2
    mkdir -p "$cache"
    npm install --silent --no-audit --no-fund --prefix "$cache" "playwright-core@$playwright_version" >&2
fi

echo "$cache/node_modules"
