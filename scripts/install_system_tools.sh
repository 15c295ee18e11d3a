#!/usr/bin/env bash
# Optional system tools for the browser and photo-metadata tests: chromium + chromedriver (the web page in a real
# headless browser) and exiftool (the independent XMP reader; also what `phototag tag --write embedded` uses).
# Best effort: installs with apt-get when it is there and we are root (or have passwordless sudo); otherwise, or if
# the install fails, it says so and exits 0 — the tests that need a missing tool then skip with the reason.
# Set PHOTOTAG_SKIP_SYSTEM_TOOLS=1 to skip.
set -uo pipefail
if [ "${PHOTOTAG_SKIP_SYSTEM_TOOLS:-0}" = "1" ]; then
    echo "system tools: skipped (PHOTOTAG_SKIP_SYSTEM_TOOLS=1)"
    exit 0
fi
missing=()
{ command -v chromium >/dev/null || command -v chromium-browser >/dev/null; } || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v exiftool >/dev/null || missing+=(libimage-exiftool-perl)
if [ ${#missing[@]} -eq 0 ]; then
    echo "system tools: chromium, chromedriver and exiftool present"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "system tools: no apt-get; not installing ${missing[*]} (browser / exiftool tests will skip)"
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "system tools: not root and no passwordless sudo; not installing ${missing[*]} (those tests will skip)"
    exit 0
fi
echo "system tools: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
if timeout 600 "${SUDO[@]}" apt-get update -qq \
    && timeout 900 "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    echo "system tools: installed ${missing[*]}"
else
    echo "system tools: apt-get failed; continuing without ${missing[*]} (those tests will skip)"
fi
exit 0
