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
.venv/bin/iterseg --version
