#!/usr/bin/env bash
# Create a separate venv holding the public TopMost 1.0.2 (the benchmark peer).
# Idempotent: re-running skips the steps that are already done.
#   PEER_VENV   venv path (default: <repo>/.peer-venv)
#   PYTHON      interpreter used to create it (default: python3)
# Recipe (see shared/notes/topmost-peer.md): torch==2.13.0 first, then topmost
# under a constraints file pinning torch; then remove torchvision, whose PyPI
# build breaks `import topmost` next to CPU torch. benchmarks/peer_topmost.py
# registers a stand-in for the one function TopMost uses from it.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEER_VENV="${PEER_VENV:-$REPO_ROOT/.peer-venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION=2.13.0
TOPMOST_VERSION=1.0.2

if [ ! -x "$PEER_VENV/bin/python" ]; then
    echo "creating venv $PEER_VENV"
    "$PYTHON" -m venv "$PEER_VENV"
fi
PY="$PEER_VENV/bin/python"

installed() {  # installed DIST VERSION -> 0 if DIST is installed at VERSION (local tag ignored)
    "$PY" - "$1" "$2" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version(sys.argv[1]).split("+")[0] == sys.argv[2] else 1)
PYEOF
}

if ! installed torch "$TORCH_VERSION"; then
    "$PY" -m pip install "torch==$TORCH_VERSION"
fi

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
if ! installed topmost "$TOPMOST_VERSION"; then
    "$PY" -m pip install "topmost==$TOPMOST_VERSION" -c "$CONSTRAINTS"
fi

if "$PY" -m pip show -q torchvision >/dev/null 2>&1; then
    "$PY" -m pip uninstall -y torchvision
fi

# Check: TopMost imports with the torchvision stand-in, and torch is still the pinned one.
cd "$REPO_ROOT"
"$PY" -c "
import sys; sys.path.insert(0, 'benchmarks')
from peer_topmost import import_topmost
topmost, torch = import_topmost()
print('peer venv ok:', '$PEER_VENV', 'torch', torch.__version__, 'topmost', '$TOPMOST_VERSION')
"
