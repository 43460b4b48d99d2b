#!/usr/bin/env bash
# Quick start, step 1: install, then generate a grid of digits 0-9 on the CPU with the small trained model shipped in
# the package (demo_output/demo.png). `bash scripts/demo.sh --tiny-random` runs the old random-weight demo instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${PYTHON:-python3}" -m bitdance_rt.cli demo --out demo_output "$@"
