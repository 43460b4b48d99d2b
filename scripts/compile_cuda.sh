#!/usr/bin/env bash
# Compile every CUDA source of csrc/ (or the files given) to objects for sm_80 and sm_90a against the installed
# torch's headers, without a GPU: a syntax or type error fails here (CI runs this from .ci/run). Objects go to a
# temporary folder and are thrown away; nothing is linked or run.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvcc >/dev/null || { echo "compile_cuda.sh: nvcc not found on PATH; install the CUDA toolkit" >&2; exit 1; }
mapfile -t includes < <(python -c "import sysconfig, torch.utils.cpp_extension as c
for p in c.include_paths(): print('-I' + p)
print('-I' + sysconfig.get_paths()['include'])")
sources=("$@"); [ ${#sources[@]} -gt 0 ] || sources=(csrc/*.cu)
objdir=$(mktemp -d); trap 'rm -rf "$objdir"' EXIT
flags=(-std=c++20 -O3 --expt-relaxed-constexpr -diag-suppress 3306 -DTORCH_EXTENSION_NAME=bitdance_rt_cuda
       -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a)
status=0
for src in "${sources[@]}"; do
  start=$SECONDS
  if nvcc -c "$src" -o "$objdir/$(basename "$src").o" "${flags[@]}" "${includes[@]}" -Icsrc -Icsrc/ci_headers; then
    echo "compiled $src for sm_80 and sm_90a in $((SECONDS - start)) s"
  else
    echo "FAILED to compile $src" >&2; status=1
  fi
done
g++ -c csrc/module.cpp -o "$objdir/module.o" -std=c++17 "${includes[@]}" && echo "compiled csrc/module.cpp" || status=1
exit $status
