#!/usr/bin/env bash
# The offline world's real data comes from Debian packages: Fashion-MNIST, WordNet 3.0 and fonts.
# Installs what is missing with apt-get when run as root; otherwise says what to run.
# With --test it also installs Chromium, which the tests use to render the HTML report headless.
set -euo pipefail
# Without root, the three settings point at copies instead (docs/install.md; 'forgetlab setup' checks them).
packages=(dataset-fashion-mnist wordnet-base wordnet-sense-index
          fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-freefont-ttf fonts-urw-base35)
if [ -n "${FORGETLAB_FONTS_DIR:-}" ] && [ -n "${FORGETLAB_FASHION_MNIST_DIR:-}" ] && [ -n "${FORGETLAB_WORDNET:-}" ]; then
    packages=()
fi
if [ "${1:-}" = "--test" ]; then
    packages+=(chromium)
fi
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    if [ "${1:-}" = "--test" ] && [ "${missing[*]}" = "chromium" ]; then
        # Only the report's browser test needs it; that test says how to get it and is skipped.
        echo "forgetlab: chromium is missing (the report's browser test will be skipped): sudo apt-get install chromium" >&2
        exit 0
    fi
    echo "forgetlab: missing Debian packages: ${missing[*]}" >&2
    echo "forgetlab: install them with: sudo apt-get install ${missing[*]}" >&2
    echo "forgetlab: without root, set FORGETLAB_FONTS_DIR, FORGETLAB_FASHION_MNIST_DIR and FORGETLAB_WORDNET to copies (docs/install.md says how)" >&2
    exit 1
fi
echo "forgetlab: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
