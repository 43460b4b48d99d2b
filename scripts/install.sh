#!/usr/bin/env bash
# Installs bitdance-rt (editable) and what it needs into the active Python environment.
#   scripts/install.sh          runtime only
#   scripts/install.sh test     plus the test dependencies
# torch is installed first, pinned, so that pip never resolves an open range to a multi-GB build by itself; a
# machine that already has torch >= 2.4 (a GPU machine, say) keeps its own.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 4))" 2>/dev/null; then
    "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "torch==${BITDANCE_TORCH_VERSION:-2.13.0}"
fi
extra=""
if [ "${1:-}" = "test" ]; then extra="[test]"; fi
"$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e ".${extra}"
