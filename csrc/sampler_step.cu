// The head's sampler step with its Gaussian noise made in the kernel (Philox 4x32-10, csrc/philox.cuh): no noise
// tensor is written or read, and a request's noise depends only on its own keys, never on its batch neighbours.
//
// Operators (torch.ops.bitdance_rt.*; outputs are caller-allocated, nothing is allocated or synchronised):
// - keyed_noise(seeds [B] int64, ar_steps [B] int32, rows_in_request [B] int32, sample_index, out [B, P, C] f32):
//   the keyed normals of bitdance_rt/reference/philox_noise.keyed_normal.
// - sampler_step_keyed(pred [m·B, P, C], x [B, P, C], times [N + 1], running [N], step, cfg [1] or [B], guided,
//   seeds, ar_steps, rows_in_request, out [B, P, C]): one Euler–Maruyama step, the math of the Triton
//   kernels/sampler_step.py `sampler_step` op for op (correctly rounded division and square root, no mul-add
//   contraction), with the noise of sample index step + 1. out may be x.
// - sampler_final(pred, x, cfg, guided, last_step_size, tokens [m·B, P, C], words? [m·B, P, C/32] int32,
//   sample? [B, P, C] f32): the last Euler step, sign, and the optional packed words (bit c of word w set iff
//   sample[..., 32·w + c] > 0) and continuous sample, as the Triton `sampler_final`.
// pred is float32, bfloat16 or float16 (tokens too); everything else float32. Guided: rows [conditional...,
// unconditional...] of pred; cfg one scale or one per row (rows at different AR steps guide differently).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "philox.cuh"
#include "float_convert.cuh"

namespace bitdance_rt {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;   // grid-stride beyond this
constexpr float kMinOneMinusT = 0.05f;    // the velocity's clamp_min of 1 − t (reference/sampler.MIN_ONE_MINUS_T)
constexpr int kBitsPerWord = 32;

using bdrt::from_float;
using bdrt::to_float;

// The per-row keys of the noise.
struct RowKeys {
  const int64_t* seeds;
  const int32_t* ar_steps;
  const int32_t* rows_in_request;
};

// Philox groups (4 consecutive elements of a request's noise) that one row of row_size elements can touch: its
// first element is row_in_request·row_size, a multiple of 4 whenever row_size is.
__host__ __device__ inline int64_t groups_per_row(int64_t row_size) {
  return row_size % kElementsPerGroup == 0 ? row_size / kElementsPerGroup : (row_size + 2) / kElementsPerGroup + 1;
}

// Thread `id` of a launch over rows × groups_per_row: its row, the normals of its group and which of the group's
// elements fall inside the row: fn(index into the [B, P, C] tensor, its normal) for each of them.
template <typename Fn>
__device__ inline void visit_group(const RowKeys& keys, uint32_t sample_index, int64_t id, int64_t row_size,
                                   int64_t groups, Fn&& fn) {
  const int64_t row = id / groups;
  const int64_t slot = id - row * groups;
  // rows_in_request and ar_step are taken as unsigned 32-bit words, like the reference's `& 0xFFFFFFFF`
  const uint64_t first = static_cast<uint64_t>(static_cast<uint32_t>(keys.rows_in_request[row])) *
                         static_cast<uint64_t>(row_size);
  const uint64_t group = first / kElementsPerGroup + static_cast<uint64_t>(slot);
  const uint64_t group_start = group * kElementsPerGroup;
  if (group_start >= first + static_cast<uint64_t>(row_size)) {
    return;  // a spare slot of a row that touches fewer groups
  }
  const float4 normals = keyed_normal_group(keys.seeds[row], static_cast<uint32_t>(keys.ar_steps[row]),
                                            sample_index, group);
#pragma unroll
  for (int lane = 0; lane < kElementsPerGroup; ++lane) {
    const uint64_t element = group_start + lane;
    if (element >= first && element < first + static_cast<uint64_t>(row_size)) {
      fn(row * row_size + static_cast<int64_t>(element - first), float4_lane(normals, lane));
    }
  }
}

// 4 consecutive values at p (aligned to 4·sizeof(T)) in one load, as floats; and 4 floats stored as T in one store.
template <typename T>
__device__ inline void load4(const T* p, float (&v)[4]) {
  if constexpr (std::is_same_v<T, float>) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  } else {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    T h[4];
    memcpy(h, &raw, sizeof(raw));
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      v[k] = to_float(h[k]);
    }
  }
}

template <typename T>
__device__ inline void store4(T* p, const float (&v)[4]) {
  if constexpr (std::is_same_v<T, float>) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    T h[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      h[k] = from_float<T>(v[k]);
    }
    uint2 raw;
    memcpy(&raw, h, sizeof(raw));
    *reinterpret_cast<uint2*>(p) = raw;
  }
}

// Rows of a multiple of 4 elements start on a group boundary: thread `id` owns elements 4·id .. 4·id + 3 of the
// batch and group row_in_request·row_size/4 + (its place in the row) of its request.
__device__ inline uint64_t aligned_group(const RowKeys& keys, int64_t row, int64_t slot, int64_t groups) {
  return static_cast<uint64_t>(static_cast<uint32_t>(keys.rows_in_request[row])) * static_cast<uint64_t>(groups) +
         static_cast<uint64_t>(slot);
}

template <bool kVector>
__global__ void keyed_noise_kernel(RowKeys keys, uint32_t sample_index, int64_t rows, int64_t row_size,
                                     int64_t groups, float* __restrict__ out) {
  const int64_t total = rows * groups;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; id < total; id += stride) {
    if constexpr (kVector) {
      const int64_t row = id / groups;
      const float4 normals = keyed_normal_group(keys.seeds[row], static_cast<uint32_t>(keys.ar_steps[row]),
                                                sample_index, aligned_group(keys, row, id - row * groups, groups));
      *reinterpret_cast<float4*>(out + kElementsPerGroup * id) = normals;
    } else {
      visit_group(keys, sample_index, id, row_size, groups, [&](int64_t index, float noise) { out[index] = noise; });
    }
  }
}

// t, dt and the step's scalars, read and derived once per thread in the Triton kernel's op order.
struct StepScalars {
  float t, dt, sigma, denom, var, noise_scale;
};

__device__ inline StepScalars step_scalars(const float* times, const float* running, int64_t step) {
  StepScalars s;
  s.t = running[step];
  s.dt = __fsub_rn(times[step + 1], times[step]);
  s.sigma = __fsub_rn(1.0f, s.t);
  s.denom = fmaxf(s.sigma, kMinOneMinusT);
  s.var = __fsub_rn(__fmul_rn(s.sigma, s.sigma), __fmul_rn(__fmul_rn(s.t, -1.0f), s.sigma));
  s.noise_scale = __fsqrt_rn(__fmul_rn(__fmul_rn(2.0f, s.sigma), s.dt));
  return s;
}

// (pred_c − x) / denom, guided with the unconditional prediction pred_u: v_u + cfg·(v_c − v_u).
template <bool kGuided>
__device__ inline float guided_velocity(float pred_c, float pred_u, float x, float denom, float cfg) {
  float v = __fdiv_rn(__fsub_rn(pred_c, x), denom);
  if constexpr (kGuided) {
    const float v_u = __fdiv_rn(__fsub_rn(pred_u, x), denom);
    v = __fadd_rn(v_u, __fmul_rn(cfg, __fsub_rn(v, v_u)));
  }
  return v;
}

// x + drift·dt + noise_scale·noise, drift = v + sigma·(t·v − x)/var.
template <bool kGuided>
__device__ inline float step_value(const StepScalars& s, float pred_c, float pred_u, float x, float cfg,
                                   float noise) {
  const float v = guided_velocity<kGuided>(pred_c, pred_u, x, s.denom, cfg);
  const float score = __fdiv_rn(__fsub_rn(__fmul_rn(s.t, v), x), s.var);
  const float drift = __fadd_rn(v, __fmul_rn(s.sigma, score));
  return __fadd_rn(__fadd_rn(x, __fmul_rn(drift, s.dt)), __fmul_rn(s.noise_scale, noise));
}

// One thread per Philox group. kVector: rows of a multiple of 4 elements and 16-byte aligned x / out (pred aligned
// to 4 elements), so each thread moves its 4 elements in one load or store per tensor; else element by element.
template <typename PredT, bool kGuided, bool kVector>
__global__ void sampler_step_keyed_kernel(const PredT* __restrict__ pred, const float* x,
                                           const float* __restrict__ times, const float* __restrict__ running,
                                           int64_t step, const float* __restrict__ cfg, int64_t cfg_stride,
                                           RowKeys keys, int64_t rows, int64_t row_size, int64_t groups,
                                           float* out) {
  const StepScalars scalars = step_scalars(times, running, step);
  const int64_t half = rows * row_size;
  const uint32_t sample_index = static_cast<uint32_t>(step + 1);
  const int64_t total = rows * groups;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; id < total; id += stride) {
    const int64_t row = id / groups;
    const float scale = kGuided ? cfg[row * cfg_stride] : 0.0f;
    if constexpr (kVector) {
      const int64_t first = kElementsPerGroup * id;
      const float4 normals = keyed_normal_group(keys.seeds[row], static_cast<uint32_t>(keys.ar_steps[row]),
                                                sample_index, aligned_group(keys, row, id - row * groups, groups));
      float xv[4], pred_c[4], pred_u[4] = {0.0f, 0.0f, 0.0f, 0.0f}, result[4];
      load4(x + first, xv);
      load4(pred + first, pred_c);
      if constexpr (kGuided) {
        load4(pred + half + first, pred_u);
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        result[k] = step_value<kGuided>(scalars, pred_c[k], pred_u[k], xv[k], scale, float4_lane(normals, k));
      }
      store4(out + first, result);
    } else {
      visit_group(keys, sample_index, id, row_size, groups, [&](int64_t index, float noise) {
        const float pred_u = kGuided ? to_float(pred[half + index]) : 0.0f;
        out[index] = step_value<kGuided>(scalars, to_float(pred[index]), pred_u, x[index], scale, noise);
      });
    }
  }
}

// The last Euler step x + v·step_size of element `index` (its row's scale when guided).
__device__ inline float final_sample(const float* cfg, int64_t cfg_stride, bool guided, float denom, float step_size,
                                     int64_t row_size, int64_t index, float xv, float pred_c, float pred_u) {
  const float v = guided ? guided_velocity<true>(pred_c, pred_u, xv, denom, cfg[(index / row_size) * cfg_stride])
                         : guided_velocity<false>(pred_c, 0.0f, xv, denom, 0.0f);
  return __fadd_rn(xv, __fmul_rn(v, step_size));
}

__device__ inline float sign_of(float v) { return v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f); }

// One thread per element; a warp covers 32 consecutive elements, i.e. one packed word when C % 32 == 0. Every lane
// of a warp runs the same iterations (the loop bound is per block), so the ballot sees the whole warp.
template <typename PredT, typename TokenT>
__global__ void sampler_final_kernel(const PredT* __restrict__ pred, const float* __restrict__ x,
                                            const float* __restrict__ cfg, int64_t cfg_stride, bool guided,
                                            float one_minus_t, float step_size, int64_t n, int64_t row_size,
                                            TokenT* __restrict__ tokens, int32_t* __restrict__ words,
                                            float* __restrict__ sample_out) {
  const float denom = fmaxf(one_minus_t, kMinOneMinusT);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x; start < n; start += stride) {
    const int64_t index = start + threadIdx.x;
    const bool active = index < n;
    float sample = 0.0f;
    if (active) {
      const float pred_u = guided ? to_float(pred[n + index]) : 0.0f;
      sample = final_sample(cfg, cfg_stride, guided, denom, step_size, row_size, index, x[index],
                            to_float(pred[index]), pred_u);
      const TokenT token = from_float<TokenT>(sign_of(sample));
      tokens[index] = token;
      if (guided) {
        tokens[n + index] = token;
      }
      if (sample_out != nullptr) {
        sample_out[index] = sample;
      }
    }
    if (words != nullptr) {
      const uint32_t bits = __ballot_sync(0xFFFFFFFFu, active && sample > 0.0f);
      if (active && threadIdx.x % kBitsPerWord == 0) {
        const int64_t word = index / kBitsPerWord;
        words[word] = static_cast<int32_t>(bits);
        if (guided) {
          words[n / kBitsPerWord + word] = static_cast<int32_t>(bits);
        }
      }
    }
  }
}

// Four elements per thread (n a multiple of 4; x, sample 16-byte aligned, pred and tokens aligned to 4 elements):
// 8 consecutive lanes cover one packed word (n a multiple of 32 when packing) and OR their 4-bit pieces together.
template <typename PredT, typename TokenT>
__global__ void sampler_final_vec_kernel(const PredT* __restrict__ pred, const float* __restrict__ x,
                                                const float* __restrict__ cfg, int64_t cfg_stride, bool guided,
                                                float one_minus_t, float step_size, int64_t n, int64_t row_size,
                                                TokenT* __restrict__ tokens, int32_t* __restrict__ words,
                                                float* __restrict__ sample_out) {
  constexpr int kLanesPerWord = kBitsPerWord / 4;
  const float denom = fmaxf(one_minus_t, kMinOneMinusT);
  const int64_t quads = n / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x; start < quads; start += stride) {
    const int64_t quad = start + threadIdx.x;
    const bool active = quad < quads;
    uint32_t bits = 0;
    if (active) {
      const int64_t first = 4 * quad;
      float xv[4], pred_c[4], pred_u[4] = {0.0f, 0.0f, 0.0f, 0.0f}, sample[4], signs[4];
      load4(x + first, xv);
      load4(pred + first, pred_c);
      if (guided) {
        load4(pred + n + first, pred_u);
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        sample[k] = final_sample(cfg, cfg_stride, guided, denom, step_size, row_size, first + k, xv[k], pred_c[k],
                                 pred_u[k]);
        signs[k] = sign_of(sample[k]);
        bits |= static_cast<uint32_t>(sample[k] > 0.0f) << (4 * (threadIdx.x % kLanesPerWord) + k);
      }
      store4(tokens + first, signs);
      if (guided) {
        store4(tokens + n + first, signs);
      }
      if (sample_out != nullptr) {
        store4(sample_out + first, sample);
      }
    }
    if (words != nullptr) {
#pragma unroll
      for (int offset = 1; offset < kLanesPerWord; offset *= 2) {
        bits |= __shfl_xor_sync(0xFFFFFFFFu, bits, offset);
      }
      if (active && threadIdx.x % kLanesPerWord == 0) {
        const int64_t word = quad / kLanesPerWord;
        words[word] = static_cast<int32_t>(bits);
        if (guided) {
          words[n / kBitsPerWord + word] = static_cast<int32_t>(bits);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side: argument checks (op name, what was wrong, what to pass), then one launch on the current stream.
// Numbers, shapes and devices reach the messages as strings made here: on the lent H100 image (torch 2.11, nvcc 13)
// a TORCH_CHECK message that streamed an integer from this extension crashed the process instead of raising.

std::string text(int64_t v) { return std::to_string(v); }

std::string text(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%g", v);
  return buffer;
}

std::string text(c10::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    out += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return out + "]";
}

std::string text(const c10::Device& device) { return device.str(); }

void check_on(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " is on ", text(t.device()), ", expected a CUDA tensor on ",
              text(like.device()));
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", text(t.device()), ", expected ",
              text(like.device()),
              " like the other inputs");
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous; call .contiguous() first");
}

void check_dtype(const char* op, const char* name, const at::Tensor& t, c10::ScalarType dtype) {
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " has dtype ", t.scalar_type(), ", expected ", dtype);
}

bool is_float_type(c10::ScalarType type) {
  return type == c10::ScalarType::Float || type == c10::ScalarType::BFloat16 || type == c10::ScalarType::Half;
}

// fn(T{}) with T the device type of a float32 / bfloat16 / float16 tensor.
template <typename Fn>
void with_float_type(const char* op, const char* name, c10::ScalarType type, Fn&& fn) {
  switch (type) {
    case c10::ScalarType::Float: fn(float{}); break;
    case c10::ScalarType::BFloat16: fn(__nv_bfloat16{}); break;
    case c10::ScalarType::Half: fn(__half{}); break;
    default: TORCH_CHECK(false, op, ": ", name, " has dtype ", type, ", expected Float, BFloat16 or Half");
  }
}

// x [B, P, C] float32 and pred [m·B, P, C] of a float type on x's device.
void check_pred_and_x(const char* op, const at::Tensor& pred, const at::Tensor& x, bool guided) {
  TORCH_CHECK(x.dim() == 3, op, ": x has shape ", text(x.sizes()), ", expected [B, P, C]");
  check_on(op, "x", x, x);
  check_dtype(op, "x", x, c10::ScalarType::Float);
  const int64_t rows = x.size(0) * (guided ? 2 : 1);
  TORCH_CHECK(pred.dim() == 3 && pred.size(0) == rows && pred.size(1) == x.size(1) && pred.size(2) == x.size(2),
              op, ": pred has shape ", text(pred.sizes()), ", expected ", text({rows, x.size(1), x.size(2)}),
              guided ? " (conditional and unconditional rows of x)" : "");
  check_on(op, "pred", pred, x);
  TORCH_CHECK(is_float_type(pred.scalar_type()), op, ": pred has dtype ", pred.scalar_type(),
              ", expected Float, BFloat16 or Half");
}

// One scale [1] or one per row [B]; returns the stride of its reads per row.
int64_t check_cfg(const char* op, const at::Tensor& cfg, const at::Tensor& x) {
  check_on(op, "cfg", cfg, x);
  check_dtype(op, "cfg", cfg, c10::ScalarType::Float);
  TORCH_CHECK(cfg.numel() == 1 || (cfg.dim() == 1 && cfg.size(0) == x.size(0)), op, ": cfg has shape ",
              text(cfg.sizes()), ", expected [1] (one scale) or [", text(x.size(0)), "] (one per row)");
  return cfg.numel() == 1 ? 0 : 1;
}

RowKeys check_keys(const char* op, const at::Tensor& seeds, const at::Tensor& ar_steps,
                   const at::Tensor& rows_in_request, const at::Tensor& like, int64_t rows) {
  const std::pair<const char*, const at::Tensor*> keys[] = {
      {"seeds", &seeds}, {"ar_steps", &ar_steps}, {"rows_in_request", &rows_in_request}};
  for (const auto& [name, t] : keys) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == rows, op, ": ", name, " has shape ", text(t->sizes()), ", expected [",
                text(rows), "] (one per row)");
    check_on(op, name, *t, like);
  }
  check_dtype(op, "seeds", seeds, c10::ScalarType::Long);
  check_dtype(op, "ar_steps", ar_steps, c10::ScalarType::Int);
  check_dtype(op, "rows_in_request", rows_in_request, c10::ScalarType::Int);
  return RowKeys{seeds.const_data_ptr<int64_t>(), ar_steps.const_data_ptr<int32_t>(),
                 rows_in_request.const_data_ptr<int32_t>()};
}

void check_output(const char* op, const char* name, const at::Tensor& out, const at::Tensor& like,
                  c10::IntArrayRef shape) {
  TORCH_CHECK(out.sizes() == shape, op, ": ", name, " has shape ", text(out.sizes()), ", expected ", text(shape));
  check_on(op, name, out, like);
}

// Whether a tensor's data can be moved 4 elements per load / store.
bool aligned_for_4(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % (4 * t.element_size()) == 0;
}

unsigned int blocks_for(int64_t threads) {
  return static_cast<unsigned int>(std::clamp<int64_t>((threads + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

void keyed_noise(const at::Tensor& seeds, const at::Tensor& ar_steps, const at::Tensor& rows_in_request,
                   int64_t sample_index, const at::Tensor& out) {
  constexpr const char* op = "keyed_noise";
  TORCH_CHECK(out.dim() == 3, op, ": out has shape ", text(out.sizes()), ", expected [B, P, C]");
  check_on(op, "out", out, out);
  check_dtype(op, "out", out, c10::ScalarType::Float);
  const RowKeys keys = check_keys(op, seeds, ar_steps, rows_in_request, out, out.size(0));
  TORCH_CHECK(sample_index >= 0 && sample_index <= 0xFFFFFFFFll, op, ": sample_index is ", text(sample_index),
              ", expected 0 (start sample) .. 2^32 - 1");
  const int64_t rows = out.size(0), row_size = out.size(1) * out.size(2);
  if (rows == 0 || row_size == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(out.device());
  const int64_t groups = groups_per_row(row_size);
  const bool vector = row_size % kElementsPerGroup == 0 && aligned_for_4(out);
  auto kernel = vector ? keyed_noise_kernel<true> : keyed_noise_kernel<false>;
  kernel<<<blocks_for(rows * groups), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      keys, static_cast<uint32_t>(sample_index), rows, row_size, groups, out.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void sampler_step_keyed(const at::Tensor& pred, const at::Tensor& x, const at::Tensor& times,
                         const at::Tensor& running, int64_t step, const at::Tensor& cfg, bool guided,
                         const at::Tensor& seeds, const at::Tensor& ar_steps, const at::Tensor& rows_in_request,
                         const at::Tensor& out) {
  constexpr const char* op = "sampler_step_keyed";
  check_pred_and_x(op, pred, x, guided);
  const int64_t cfg_stride = check_cfg(op, cfg, x);
  TORCH_CHECK(times.dim() == 1 && times.size(0) >= 2, op, ": times has shape ", text(times.sizes()),
              ", expected [N + 1] with N >= 1 sampling steps");
  check_on(op, "times", times, x);
  check_dtype(op, "times", times, c10::ScalarType::Float);
  const int64_t num_steps = times.size(0) - 1;
  TORCH_CHECK(running.dim() == 1 && running.size(0) == num_steps, op, ": running has shape ",
              text(running.sizes()), ", expected [", text(num_steps), "] (one time per sampling step)");
  check_on(op, "running", running, x);
  check_dtype(op, "running", running, c10::ScalarType::Float);
  TORCH_CHECK(step >= 0 && step < num_steps, op, ": step is ", text(step), ", expected [0, ", text(num_steps),
              ") for ", text(num_steps), " sampling steps");
  const RowKeys keys = check_keys(op, seeds, ar_steps, rows_in_request, x, x.size(0));
  check_output(op, "out", out, x, x.sizes());
  check_dtype(op, "out", out, c10::ScalarType::Float);
  const int64_t rows = x.size(0), row_size = x.size(1) * x.size(2);
  if (rows == 0 || row_size == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t groups = groups_per_row(row_size);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool vector = row_size % kElementsPerGroup == 0 && aligned_for_4(x) && aligned_for_4(out) &&
                      aligned_for_4(pred);
  with_float_type(op, "pred", pred.scalar_type(), [&](auto tag) {
    using PredT = decltype(tag);
    const auto* pred_ptr = static_cast<const PredT*>(pred.const_data_ptr());
    auto kernel = guided ? (vector ? sampler_step_keyed_kernel<PredT, true, true>
                                   : sampler_step_keyed_kernel<PredT, true, false>)
                         : (vector ? sampler_step_keyed_kernel<PredT, false, true>
                                   : sampler_step_keyed_kernel<PredT, false, false>);
    kernel<<<blocks_for(rows * groups), kThreads, 0, stream>>>(
        pred_ptr, x.const_data_ptr<float>(), times.const_data_ptr<float>(), running.const_data_ptr<float>(), step,
        cfg.const_data_ptr<float>(), cfg_stride, keys, rows, row_size, groups, out.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void sampler_final(const at::Tensor& pred, const at::Tensor& x, const at::Tensor& cfg, bool guided,
                          double last_step_size, const at::Tensor& tokens, const std::optional<at::Tensor>& words,
                          const std::optional<at::Tensor>& sample) {
  constexpr const char* op = "sampler_final";
  check_pred_and_x(op, pred, x, guided);
  const int64_t cfg_stride = check_cfg(op, cfg, x);
  TORCH_CHECK(last_step_size > 0.0 && last_step_size <= 1.0, op, ": last_step_size is ", text(last_step_size),
              ", expected a float in (0, 1]");
  check_output(op, "tokens", tokens, x, pred.sizes());
  TORCH_CHECK(is_float_type(tokens.scalar_type()), op, ": tokens has dtype ", tokens.scalar_type(),
              ", expected Float, BFloat16 or Half");
  const int64_t channels = x.size(2);
  if (words.has_value()) {
    TORCH_CHECK(channels % kBitsPerWord == 0, op, ": packing needs a channel count that is a multiple of ",
                text(int64_t{kBitsPerWord}), ", got C = ", text(channels), "; pass no words");
    check_output(op, "words", *words, x, {pred.size(0), pred.size(1), channels / kBitsPerWord});
    check_dtype(op, "words", *words, c10::ScalarType::Int);
  }
  if (sample.has_value()) {
    check_output(op, "sample", *sample, x, x.sizes());
    check_dtype(op, "sample", *sample, c10::ScalarType::Float);
  }
  const int64_t n = x.numel();
  if (n == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(x.device());
  // the reference's t = float32(1 − last_step_size), then 1 − t and the step size in float32
  const float t_last = static_cast<float>(1.0 - last_step_size);
  const float one_minus_t = 1.0f - t_last;
  const float step_size = static_cast<float>(last_step_size);
  int32_t* words_ptr = words.has_value() ? words->mutable_data_ptr<int32_t>() : nullptr;
  float* sample_ptr = sample.has_value() ? sample->mutable_data_ptr<float>() : nullptr;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool vector = n % 4 == 0 && x.size(1) * channels % 4 == 0 && aligned_for_4(x) && aligned_for_4(pred) &&
                      aligned_for_4(tokens) && (!sample.has_value() || aligned_for_4(*sample));
  with_float_type(op, "pred", pred.scalar_type(), [&](auto pred_tag) {
    using PredT = decltype(pred_tag);
    with_float_type(op, "tokens", tokens.scalar_type(), [&](auto token_tag) {
      using TokenT = decltype(token_tag);
      auto kernel = vector ? sampler_final_vec_kernel<PredT, TokenT>
                           : sampler_final_kernel<PredT, TokenT>;
      kernel<<<blocks_for(vector ? n / 4 : n), kThreads, 0, stream>>>(
          static_cast<const PredT*>(pred.const_data_ptr()), x.const_data_ptr<float>(), cfg.const_data_ptr<float>(),
          cfg_stride, guided, one_minus_t, step_size, n, x.size(1) * channels,
          static_cast<TokenT*>(tokens.mutable_data_ptr()), words_ptr, sample_ptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace
}  // namespace bitdance_rt

TORCH_LIBRARY_FRAGMENT(bitdance_rt, m) {
  m.def("keyed_noise(Tensor seeds, Tensor ar_steps, Tensor rows_in_request, int sample_index, "
        "Tensor(a!) out) -> ()");
  m.def("sampler_step_keyed(Tensor pred, Tensor x, Tensor times, Tensor running, int step, Tensor cfg, "
        "bool guided, Tensor seeds, Tensor ar_steps, Tensor rows_in_request, Tensor(a!) out) -> ()");
  m.def("sampler_final(Tensor pred, Tensor x, Tensor cfg, bool guided, float last_step_size, "
        "Tensor(a!) tokens, Tensor(b!)? words, Tensor(c!)? sample) -> ()");
}

TORCH_LIBRARY_IMPL(bitdance_rt, CUDA, m) {
  m.impl("keyed_noise", &bitdance_rt::keyed_noise);
  m.impl("sampler_step_keyed", &bitdance_rt::sampler_step_keyed);
  m.impl("sampler_final", &bitdance_rt::sampler_final);
}
