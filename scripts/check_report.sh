#!/usr/bin/env bash
# Opens a `vdit compare` or `vdit eval` report.html in headless Chromium (Debian's `chromium`
# package) and checks it as a person would see it: the page logs nothing to the console (no
# script error, no file that failed to load), and its rendered DOM holds the summary table and
# the plots (SVG). Then writes a screenshot of the page's top.
#   bash scripts/check_report.sh DIR/report.html [SCREENSHOT.png]   (default DIR/report.png)
set -euo pipefail
if [ "$#" -lt 1 ] || [ ! -f "$1" ]; then
  echo "error: give a report.html that exists: bash scripts/check_report.sh DIR/report.html [PNG]" >&2
  exit 2
fi
command -v chromium >/dev/null || {
  echo "error: chromium is not installed: apt-get update && apt-get install -y chromium" >&2
  exit 2
}
report=$(realpath "$1")
shot=${2:-${report%.html}.png}
if [ -e "$shot" ] && [ -z "${OVERWRITE:-}" ]; then
  echo "error: $shot already exists: move it away, give another path, or set OVERWRITE=1" >&2
  exit 2
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
browse() {
  timeout 120 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --user-data-dir="$scratch/profile" --enable-logging=stderr --log-level=0 \
    --virtual-time-budget=5000 "$@" "file://$report"
}
browse --dump-dom >"$scratch/dom.html" 2>"$scratch/console.log"
failed=0
if grep -q ":CONSOLE" "$scratch/console.log"; then
  echo "console messages (the page should log none):" >&2
  grep ":CONSOLE" "$scratch/console.log" | sed 's/^[^]]*] /  /' >&2
  failed=1
fi
for element in "<table" "<svg"; do
  if ! grep -q "$element" "$scratch/dom.html"; then
    echo "the rendered page has no $element element" >&2
    failed=1
  fi
done
browse --window-size=1280,1600 --screenshot="$scratch/shot.png" >/dev/null 2>&1
[ -s "$scratch/shot.png" ] || { echo "error: chromium wrote no screenshot" >&2; exit 1; }
cp "$scratch/shot.png" "$shot"
count() { grep -o "$1" "$scratch/dom.html" | wc -l || true; }
echo "report: $(count "<table") table(s), $(count "<svg") plot(s), $(count "<video") video(s); screenshot $shot"
exit "$failed"
