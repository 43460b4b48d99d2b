#!/usr/bin/env bash
# Quick start, step 2: install with the test dependencies and run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
exec "${PYTHON:-python3}" -m pytest tests -q "$@"
