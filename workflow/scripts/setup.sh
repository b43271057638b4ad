#!/usr/bin/env bash
# Create (or update) the environment in .venv/ at the repository root, with the `iterseg`
# command and every pinned dependency (workflow/constraints.txt). Idempotent.
#   EXTRAS=test  also installs the test tools (pytest, ruff, mypy).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "iterseg needs Python 3.11"' || {
  echo "setup: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
spec="."
[ -n "${EXTRAS:-}" ] && spec=".[${EXTRAS}]"
.venv/bin/python -m pip install --quiet --upgrade pip
# torch/torchvision pins: see workflow/constraints.txt and the README (torchvision must match
# torch, or nnU-Net's trainer lookup crashes on import).
.venv/bin/python -m pip install --quiet -c workflow/constraints.txt -e "$spec"
# The test suite brings up a real single-node SLURM (tests/slurm_cluster.py) from Debian's
# packages, with accounting (slurmdbd on a private MariaDB); install them when setting up for
# tests as root (CI). Elsewhere, say what is missing.
has() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
# The tests start their own daemons: keep apt from starting the system's (MariaDB on 3306,
# slurmctld, Orthanc on 8042 ...) with a policy-rc.d that refuses, removed on exit if ours.
no_service_start() {
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
}
if [[ ",${EXTRAS:-}," == *",test,"* ]] && ! { has slurmctld && has slurmdbd; }; then
  slurm_pkgs=(slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge slurmdbd mariadb-server)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    no_service_start
    apt-get install -y -qq "${slurm_pkgs[@]}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${slurm_pkgs[@]}" >/dev/null; }
  else
    echo "setup: the SLURM tests need: apt-get install ${slurm_pkgs[*]} (as root)" >&2
  fi
fi
# The PACS tests run a private Orthanc with its DICOMweb plugin (tests/orthanc_server.py).
orthanc_files=(/usr/sbin/Orthanc /usr/share/orthanc/plugins/libOrthancDicomWeb.so)
if [[ ",${EXTRAS:-}," == *",test,"* ]] && ! { [ -x "${orthanc_files[0]}" ] && [ -e "${orthanc_files[1]}" ]; }; then
  orthanc_pkgs=(orthanc orthanc-dicomweb)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    no_service_start
    apt-get install -y -qq "${orthanc_pkgs[@]}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${orthanc_pkgs[@]}" >/dev/null; }
  else
    for f in "${orthanc_files[@]}"; do [ -e "$f" ] || echo "setup: missing $f" >&2; done
    echo "setup: the PACS tests need: apt-get install ${orthanc_pkgs[*]} (as root)" >&2
  fi
fi
[[ ",${EXTRAS:-}," == *",test,"* ]] && bash tests/ohif/install.sh
.venv/bin/iterseg --version
