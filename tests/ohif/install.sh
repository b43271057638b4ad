#!/usr/bin/env bash
# Install OHIF's SEG readers (dcmjs, @cornerstonejs/adapters) pinned by package-lock.json into
# tests/ohif/node_modules, for tests/ohif_readers.py. Idempotent: nothing to do when node_modules
# was installed from the current lock file.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "tests/ohif/install.sh: '$tool' is not on PATH; the OHIF reader tests need Node >= 18 and npm" \
      "(e.g. apt-get install nodejs npm, or https://nodejs.org)" >&2
    exit 1
  fi
done
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 18 ]; then
  echo "tests/ohif/install.sh: node $(node --version) is too old; the OHIF reader tests need Node >= 18" >&2
  exit 1
fi
# npm writes node_modules/.package-lock.json at the end of every install: newer than the lock and
# package.json means node_modules is what they pin
stamp="$here/node_modules/.package-lock.json"
if [ -f "$stamp" ] && [ "$stamp" -nt "$here/package-lock.json" ] && [ "$stamp" -nt "$here/package.json" ] \
  && [ -d "$here/node_modules/@cornerstonejs/adapters" ]; then
  exit 0
fi
npm ci --prefix "$here" --no-audit --no-fund --loglevel=error
