#!/usr/bin/env bash
# Peers of benchmarks/convert.py: dcm2niix (the reference converter) and pigz (its fast gzip).
# Installs Debian's packages with apt-get when missing; needs root (or sudo). Idempotent.
#
#     bash benchmarks/convert_setup.sh
set -euo pipefail

missing=()
command -v dcm2niix >/dev/null 2>&1 || missing+=(dcm2niix)
command -v pigz >/dev/null 2>&1 || missing+=(pigz)
if [ "${#missing[@]}" -eq 0 ]; then
  echo "convert_setup: dcm2niix and pigz already installed"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "convert_setup: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "convert_setup: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
dcm2niix -v 2>/dev/null | head -n 2 || true
