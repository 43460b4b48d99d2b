#!/usr/bin/env bash
# Quick start, step 1: install, write a tiny random-weight text-to-image model and generate a PNG on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${PYTHON:-python3}" -m bitdance_rt.cli demo --out demo_output "$@"
