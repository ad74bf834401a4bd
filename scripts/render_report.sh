#!/usr/bin/env bash
# Render a baldflow HTML report in headless Chromium to a PNG, to check how it looks.
# Usage: scripts/render_report.sh REPORT.html [OUT.png] [WIDTHxHEIGHT]
# Installs Debian's chromium package first if no chromium is on PATH (needs root and apt).
set -euo pipefail

report=${1:?usage: $0 REPORT.html [OUT.png] [WIDTHxHEIGHT]}
out=${2:-${report%.html}.png}
size=${3:-1200x1600}

browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z "$browser" ]]; then
    echo "chromium not found; installing Debian's chromium package" >&2
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
    browser=$(command -v chromium)
fi

# A fresh profile, no network chatter, no sandbox (root in a container has none to offer).
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --window-size="${size/x/,}" \
    --screenshot="$(realpath -m "$out")" "file://$(realpath "$report")" >/dev/null 2>&1
test -s "$out"
echo "rendered $report -> $out"
