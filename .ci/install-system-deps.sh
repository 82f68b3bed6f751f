#!/usr/bin/env bash
# Install the system (apt) packages some tests need:
#   gdal-bin      ogrinfo, to read exports with the GDAL command line tools
#   python3-qgis  real QGIS (3.22 on Debian 12 / Ubuntu 22.04) for tests/qgis_check.py,
#                 run with /usr/bin/python3 by tests/test_export.py
#
# Idempotent (installs only what is missing), quiet, non-interactive; safe to
# run as root in CI. Where apt-get is unavailable, or we are not root and have
# no password-less sudo, it says so and exits 0: the tests that need these
# packages then skip with a reason. A failed installation exits non-zero.
#
# Usage: .ci/install-system-deps.sh        (about 2-3 minutes on a bare Debian 12)
set -euo pipefail

PACKAGES=(gdal-bin python3-qgis)
say() { echo "install-system-deps: $*" >&2; }

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
  say "apt-get not available; skipping ${PACKAGES[*]} (QGIS tests will be skipped)"
  exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  say "already installed: ${PACKAGES[*]}"
else
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      SUDO=(sudo -n)
    else
      say "not root and no password-less sudo; run: sudo apt-get install -y ${missing[*]}"
      exit 0
    fi
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  log="$(mktemp)"
  trap 'rm -f "$log"' EXIT
  # An earlier installation cut off mid-way (a CI run killed while apt ran) leaves dpkg
  # "interrupted", and apt-get then refuses everything until it is finished.
  if ! { "${SUDO[@]}" dpkg --configure -a \
      && "${SUDO[@]}" apt-get update -qq \
      && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
      >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    say "apt-get failed to install ${missing[*]}"
    exit 1
  fi
fi

if ! QT_QPA_PLATFORM=offscreen /usr/bin/python3 -c "import qgis.core" 2>/dev/null; then
  say "python3-qgis is installed but '/usr/bin/python3 -c \"import qgis.core\"' fails"
  exit 1
fi
say "ok: $(ogrinfo --version 2>/dev/null || echo 'ogrinfo missing'); QGIS $(
  QT_QPA_PLATFORM=offscreen /usr/bin/python3 -c 'from qgis.core import Qgis; print(Qgis.QGIS_VERSION)' 2>/dev/null)"
