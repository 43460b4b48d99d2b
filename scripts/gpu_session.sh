#!/usr/bin/env bash
# One lent-GPU session in one command: environment, install, then the stages named in $1 (comma-separated):
#   tests  - the whole suite on the GPU (bf16 and CUDA-only cases included), log and junit under $OUT
#   bench  - the microbenchmarks, JSON under $OUT
#   e2e    - bench/e2e.py on the released shapes ($E2E_ARGS, default: 14B-64x batch 1,8 then B-16x batch 256)
#   cuda   - the CUDA extension's tests and benchmarks only
# Each stage is bounded by its own timeout so one slow stage cannot eat the whole call.
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
STAGES=${1:-tests,bench,e2e}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/env.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/env.txt"
git rev-parse --short HEAD 2>/dev/null | tee -a "$OUT/env.txt"
# no network there: instead of pip, put the checkout on the path (kernels/ is the package bitdance_rt.kernels)
[ -e bitdance_rt/kernels ] || ln -s ../kernels bitdance_rt/kernels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
has() { [[ ",$STAGES," == *",$1,"* ]]; }
if has tests; then
  timeout ${TEST_TIMEOUT:-300} python3 -m pytest tests -q -rfEs -p no:cacheprovider --timeout 120 \
    --durations=12 --junitxml="$OUT/tests.xml" ${TEST_ARGS:-} >"$OUT/tests.log" 2>&1
  echo "tests rc=$?"; grep -E "passed|failed|error" "$OUT/tests.log" | tail -3
  grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -40
fi
if has cuda; then
  timeout ${CUDA_TIMEOUT:-240} python3 -m pytest tests/cuda -q -rfEs -p no:cacheprovider >"$OUT/cuda_tests.log" 2>&1
  echo "cuda tests rc=$?"; tail -25 "$OUT/cuda_tests.log"
fi
if has bench; then
  timeout ${BENCH_TIMEOUT:-180} python3 -m pytest bench -q -p no:cacheprovider --benchmark-columns=median,rounds \
    --benchmark-json="$OUT/bench.json" ${BENCH_ARGS:-} >"$OUT/bench.log" 2>&1
  echo "bench rc=$?"; python3 bench/summarize.py "$OUT/bench.json" 2>&1 | tail -60 || tail -30 "$OUT/bench.log"
fi
if has e2e; then
  for spec in ${E2E_RUNS:-"14B-64x:1,8" "B-16x:256"}; do
    m=${spec%%:*}; b=${spec##*:}
    timeout ${E2E_TIMEOUT:-200} python3 bench/e2e.py --models "$m" --batch "$b" ${E2E_ARGS:-} \
      --out "$OUT/e2e-$m.json" >"$OUT/e2e-$m.log" 2>&1
    echo "e2e $m rc=$?"; tail -25 "$OUT/e2e-$m.log"
  done
fi
