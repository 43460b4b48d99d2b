// Compile-check stand-in: torch's CPU wheels ship the c10/cuda headers but not this generated one.
// Only scripts/compile_cuda.sh puts this folder on the include path; real builds use torch's own.
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS
