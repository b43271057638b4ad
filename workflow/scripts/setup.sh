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
# packages; install them when setting up for tests as root (CI). Elsewhere, say what is missing.
if [[ ",${EXTRAS:-}," == *",test,"* ]] && ! command -v slurmctld >/dev/null 2>&1 && [ ! -x /usr/sbin/slurmctld ]; then
  slurm_pkgs=(slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${slurm_pkgs[@]}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${slurm_pkgs[@]}" >/dev/null; }
  else
    echo "setup: the SLURM tests need: apt-get install ${slurm_pkgs[*]} (as root)" >&2
  fi
fi
.venv/bin/iterseg --version
