// Conversions between the storage dtypes the kernels take (float32, bfloat16, float16) and float32 arithmetic,
// shared by every csrc/*.cu: to_float widens exactly; from_float<T> rounds to nearest even.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace bdrt {

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ inline float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ inline T from_float(float x);
template <>
__device__ inline float from_float<float>(float x) { return x; }
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ inline __half from_float<__half>(float x) { return __float2half_rn(x); }

}  // namespace bdrt
