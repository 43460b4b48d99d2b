// Fused pre-attention step of the Qwen3 backbone: torch.ops.bitdance_rt.qk_norm_rope_append, in one launch.
//
// Per (token, head) row: RMSNorm of q and k by the HF rule (normalise in float32, round to the input dtype, times
// the weight, round), rotate-half RoPE at position lengths[b] + t with the float32 tables rounded to the input
// dtype and every product and sum rounded as transformers rounds them; q goes to q_out [B, Hq, T, D], the rotated
// K and the copied V to the caches [B, Hkv, Lmax, D] at row lengths[b] + t. Same contract as the Triton kernel
// (kernels/pre_attention.py) and bitdance_rt/reference/pre_attention.py:
//   q [B, T, Hq, D], k and v [B, T, Hkv, D] (strided views, channel stride 1), float32 / bf16 / fp16;
//   norm weights [D] in that dtype; cos, sin float32 [max_pos, D] contiguous; caches contiguous; lengths int32 [B]
//   on the device (never read on the host). Positions outside the tables give zeros for q and k; positions outside
//   the cache are not written.
//
// Layout: a row (one head of one token) is handled by a group of lanes of one warp, each lane owning 16 bytes
// of each half of the head (the adjacent pairs (i, i + D/2) for its 16 / sizeof(T) values of i), moved as uint4
// when everything is 16-byte aligned (element by element otherwise); the group sums squares with xor shuffles.
// Blocks [0, q_blocks) take the q rows r = (b·T + t)·Hq + h, the blocks after them the KV rows
// r = (b·T + t)·Hkv + h. D is a template parameter; 16, 32, 64, 128 and 256 are instantiated.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include "float_convert.cuh"

namespace {

constexpr int kWarpSize = 32;
constexpr int kPreAttentionThreads = 256;
constexpr int kWarpsPerBlock = kPreAttentionThreads / kWarpSize;

using bdrt::from_float;
using bdrt::to_float;

// x rounded to T and widened again: the rounding a PyTorch op in dtype T applies to its float32 result.
template <typename T>
__device__ inline float round_to(float x) { return to_float(from_float<T>(x)); }

// A row (one head of one token) is split over kLanes lanes of a warp; lane l owns the kPairsPerLane adjacent
// pairs (i, i + D/2) for i in [l·kPairsPerLane, (l + 1)·kPairsPerLane): 16 bytes of each half of the head.
template <typename T, int kHeadDim>
struct HeadLayout {
  static constexpr int kPairs = kHeadDim / 2;
  static constexpr int kVectorPairs = 16 / static_cast<int>(sizeof(T));
  static constexpr int kPairsPerLane = kPairs < kVectorPairs ? kPairs : kVectorPairs;
  static constexpr int kLanes = kPairs / kPairsPerLane;  // lanes per row
  static constexpr int kRowsPerWarp = kWarpSize / kLanes;
  static constexpr int kRowsPerBlock = kWarpsPerBlock * kRowsPerWarp;
  static_assert(kHeadDim % 2 == 0 && kPairs % kPairsPerLane == 0, "head dim must be even");
  static_assert(kLanes <= kWarpSize && kWarpSize % kLanes == 0,
                "head dim / 2 must be a power of two between 8 and 128 (or divide the lanes evenly)");
};

// N consecutive elements at p (16-byte aligned when kVector) as float32, and back.
template <int N, bool kVector, typename T>
__device__ inline void load_floats(const T* p, float (&out)[N]) {
  T values[N];
  if constexpr (kVector && (N * sizeof(T)) % 16 == 0) {
#pragma unroll
    for (int v = 0; v < static_cast<int>(N * sizeof(T) / 16); ++v) {
      const uint4 bits = reinterpret_cast<const uint4*>(p)[v];
      memcpy(&values[v * 16 / sizeof(T)], &bits, 16);
    }
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) values[j] = p[j];
  }
#pragma unroll
  for (int j = 0; j < N; ++j) out[j] = to_float(values[j]);
}

template <int N, bool kVector, typename T>
__device__ inline void store_floats(T* p, const float (&in)[N]) {
  T values[N];
#pragma unroll
  for (int j = 0; j < N; ++j) values[j] = from_float<T>(in[j]);
  if constexpr (kVector && (N * sizeof(T)) % 16 == 0) {
#pragma unroll
    for (int v = 0; v < static_cast<int>(N * sizeof(T) / 16); ++v) {
      uint4 bits;
      memcpy(&bits, &values[v * 16 / sizeof(T)], 16);
      reinterpret_cast<uint4*>(p)[v] = bits;
    }
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) p[j] = values[j];
  }
}

template <int N, bool kVector, typename T>
__device__ inline void copy_elements(T* dst, const T* src) {
  if constexpr (kVector && (N * sizeof(T)) % 16 == 0) {
#pragma unroll
    for (int v = 0; v < static_cast<int>(N * sizeof(T) / 16); ++v) {
      reinterpret_cast<uint4*>(dst)[v] = reinterpret_cast<const uint4*>(src)[v];
    }
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) dst[j] = src[j];
  }
}

template <typename T>
struct PreAttentionArgs {
  const T* q;
  const T* k;
  const T* v;
  const T* q_weight;
  const T* k_weight;
  const float* cos;
  const float* sin;
  T* k_cache;
  T* v_cache;
  const int32_t* lengths;
  T* q_out;
  int64_t tokens, q_heads, kv_heads, max_pos, max_len;
  int64_t q_rows, kv_rows, q_blocks;
  int64_t q_stride_b, q_stride_t, q_stride_h;
  int64_t k_stride_b, k_stride_t, k_stride_h;
  int64_t v_stride_b, v_stride_t, v_stride_h;
  float eps;
};

// Sum over the kLanes lanes of a row (aligned groups of a power-of-two size: xor stays inside the group).
template <int kLanes>
__device__ inline float row_sum(float x) {
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xFFFFFFFFu, x, offset);
  return x;
}

// kVector: every row start, weight, table row and cache row is 16-byte aligned (checked on the host), so each
// lane moves its 16-byte pieces as uint4; otherwise element by element.
template <typename T, int kHeadDim, bool kVector>
__global__ void __launch_bounds__(kPreAttentionThreads) qk_norm_rope_append_kernel(const PreAttentionArgs<T> a) {
  using L = HeadLayout<T, kHeadDim>;
  constexpr int kHalf = kHeadDim / 2;
  constexpr int kN = L::kPairsPerLane;
  const int lane = threadIdx.x % kWarpSize;
  const int first = (lane % L::kLanes) * kN;  // this lane's first pair
  const bool is_q = blockIdx.x < a.q_blocks;
  const int64_t block = is_q ? blockIdx.x : blockIdx.x - a.q_blocks;
  const int64_t row = block * L::kRowsPerBlock + (threadIdx.x / kWarpSize) * L::kRowsPerWarp + lane / L::kLanes;
  const int64_t heads = is_q ? a.q_heads : a.kv_heads;
  // Rows past the end still run the shuffles (every lane must), on zeros, and store nothing.
  const bool row_ok = row < (is_q ? a.q_rows : a.kv_rows);
  const int64_t head = row % heads;
  const int64_t t = (row / heads) % a.tokens;
  const int64_t b = row / heads / a.tokens;
  const int64_t pos = row_ok ? static_cast<int64_t>(a.lengths[b]) + t : -1;
  const bool in_table = row_ok && pos >= 0 && pos < a.max_pos;

  const T* src = is_q ? a.q + b * a.q_stride_b + t * a.q_stride_t + head * a.q_stride_h
                      : a.k + b * a.k_stride_b + t * a.k_stride_t + head * a.k_stride_h;
  float x_a[kN], x_b[kN];
  if (row_ok) {
    load_floats<kN, kVector>(src + first, x_a);
    load_floats<kN, kVector>(src + first + kHalf, x_b);
  } else {
#pragma unroll
    for (int j = 0; j < kN; ++j) x_a[j] = x_b[j] = 0.0f;
  }
  float squares = 0.0f;
#pragma unroll
  for (int j = 0; j < kN; ++j) squares += x_a[j] * x_a[j] + x_b[j] * x_b[j];
  const float inv_rms = rsqrtf(row_sum<L::kLanes>(squares) / static_cast<float>(kHeadDim) + a.eps);

  T* dst = nullptr;  // the row's destination: q_out, or the K cache row when it lies inside the cache
  if (is_q && row_ok) {
    dst = a.q_out + ((b * a.q_heads + head) * a.tokens + t) * kHeadDim;
  } else if (!is_q && pos >= 0 && pos < a.max_len) {
    dst = a.k_cache + ((b * a.kv_heads + head) * a.max_len + pos) * kHeadDim;
  }
  if (dst == nullptr) return;  // after the shuffles: no lane waits for this one any more

  float w_a[kN], w_b[kN], cos_a[kN], cos_b[kN], sin_a[kN], sin_b[kN];
  const T* weight = is_q ? a.q_weight : a.k_weight;
  load_floats<kN, kVector>(weight + first, w_a);
  load_floats<kN, kVector>(weight + first + kHalf, w_b);
  if (in_table) {
    const float* cos_row = a.cos + pos * kHeadDim;
    const float* sin_row = a.sin + pos * kHeadDim;
    load_floats<kN, kVector>(cos_row + first, cos_a);
    load_floats<kN, kVector>(cos_row + first + kHalf, cos_b);
    load_floats<kN, kVector>(sin_row + first, sin_a);
    load_floats<kN, kVector>(sin_row + first + kHalf, sin_b);
  } else {  // outside the tables: q and k come out as zeros, as in the Triton kernel
#pragma unroll
    for (int j = 0; j < kN; ++j) cos_a[j] = cos_b[j] = sin_a[j] = sin_b[j] = 0.0f;
  }
  float out_a[kN], out_b[kN];
#pragma unroll
  for (int j = 0; j < kN; ++j) {
    // HF RMSNorm: normalise in float32, round to T, times the weight, round
    const float n_a = round_to<T>(__fmul_rn(w_a[j], round_to<T>(__fmul_rn(x_a[j], inv_rms))));
    const float n_b = round_to<T>(__fmul_rn(w_b[j], round_to<T>(__fmul_rn(x_b[j], inv_rms))));
    // x·cos + rotate_half(x)·sin with rotate_half(x) = (−x_b, x_a), tables rounded to T, each product and the
    // sum rounded to T
    const float c_a = round_to<T>(cos_a[j]), c_b = round_to<T>(cos_b[j]);
    const float s_a = round_to<T>(sin_a[j]), s_b = round_to<T>(sin_b[j]);
    out_a[j] = round_to<T>(__fsub_rn(round_to<T>(__fmul_rn(n_a, c_a)), round_to<T>(__fmul_rn(n_b, s_a))));
    out_b[j] = round_to<T>(__fadd_rn(round_to<T>(__fmul_rn(n_b, c_b)), round_to<T>(__fmul_rn(n_a, s_b))));
  }
  store_floats<kN, kVector>(dst + first, out_a);
  store_floats<kN, kVector>(dst + first + kHalf, out_b);

  if (!is_q) {  // V: a copy into the same cache row
    const T* v_src = a.v + b * a.v_stride_b + t * a.v_stride_t + head * a.v_stride_h;
    T* v_dst = a.v_cache + ((b * a.kv_heads + head) * a.max_len + pos) * kHeadDim;
    copy_elements<kN, kVector>(v_dst + first, v_src + first);
    copy_elements<kN, kVector>(v_dst + first + kHalf, v_src + first + kHalf);
  }
}

// ------------------------------------------------------------------------------------------------ host side
// Messages format numbers with std::to_string, never through an ostream: an extension built by
// torch.utils.cpp_extension on the lent H100 image crashed inside std::ostream's integer insertion (seen in
// c10::str while a check failed), so no check streams an integer or a shape.

constexpr const char* kOp = "qk_norm_rope_append";

std::string shape_of(const at::Tensor& t) {
  std::string text = "[";
  for (int64_t d = 0; d < t.dim(); ++d) text += (d ? ", " : "") + std::to_string(t.size(d));
  return text + "]";
}

template <typename T>
const T* typed(const at::Tensor& t) {
  return static_cast<const T*>(t.data_ptr());
}

template <typename T>
T* typed_mut(at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Whether every 16-byte piece a lane moves is 16-byte aligned: all base pointers, and the row strides of q, k, v.
template <typename T>
bool vector_aligned(const PreAttentionArgs<T>& a) {
  const void* pointers[] = {a.q, a.k, a.v, a.q_weight, a.k_weight, a.cos, a.sin, a.k_cache, a.v_cache, a.q_out};
  for (const void* p : pointers) {
    if (!aligned16(p)) return false;
  }
  const int64_t strides[] = {a.q_stride_b, a.q_stride_t, a.q_stride_h, a.k_stride_b, a.k_stride_t,
                             a.k_stride_h, a.v_stride_b, a.v_stride_t, a.v_stride_h};
  for (const int64_t stride : strides) {
    if ((stride * static_cast<int64_t>(sizeof(T))) % 16 != 0) return false;
  }
  return true;
}

template <typename T, int kHeadDim>
void launch(PreAttentionArgs<T>& args, cudaStream_t stream) {
  constexpr int64_t rows_per_block = HeadLayout<T, kHeadDim>::kRowsPerBlock;
  args.q_blocks = (args.q_rows + rows_per_block - 1) / rows_per_block;
  const int64_t blocks = args.q_blocks + (args.kv_rows + rows_per_block - 1) / rows_per_block;
  TORCH_CHECK(blocks < (int64_t{1} << 31), kOp, ": ", std::to_string(blocks), " blocks exceed the grid limit");
  const unsigned grid = static_cast<unsigned>(blocks);
  if ((kHeadDim / 2) * sizeof(T) % 16 == 0 && vector_aligned(args)) {
    qk_norm_rope_append_kernel<T, kHeadDim, true><<<grid, kPreAttentionThreads, 0, stream>>>(args);
  } else {
    qk_norm_rope_append_kernel<T, kHeadDim, false><<<grid, kPreAttentionThreads, 0, stream>>>(args);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_for_dtype(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_weight,
                      const at::Tensor& k_weight, double eps, const at::Tensor& cos, const at::Tensor& sin,
                      at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& lengths, at::Tensor& q_out,
                      cudaStream_t stream) {
  PreAttentionArgs<T> args{};
  args.q = typed<T>(q);
  args.k = typed<T>(k);
  args.v = typed<T>(v);
  args.q_weight = typed<T>(q_weight);
  args.k_weight = typed<T>(k_weight);
  args.cos = typed<float>(cos);
  args.sin = typed<float>(sin);
  args.k_cache = typed_mut<T>(k_cache);
  args.v_cache = typed_mut<T>(v_cache);
  args.lengths = typed<int32_t>(lengths);
  args.q_out = typed_mut<T>(q_out);
  const int64_t batch = q.size(0);
  args.tokens = q.size(1);
  args.q_heads = q.size(2);
  args.kv_heads = k.size(2);
  args.max_pos = cos.size(0);
  args.max_len = k_cache.size(2);
  args.q_rows = batch * args.tokens * args.q_heads;
  args.kv_rows = batch * args.tokens * args.kv_heads;
  args.q_stride_b = q.stride(0), args.q_stride_t = q.stride(1), args.q_stride_h = q.stride(2);
  args.k_stride_b = k.stride(0), args.k_stride_t = k.stride(1), args.k_stride_h = k.stride(2);
  args.v_stride_b = v.stride(0), args.v_stride_t = v.stride(1), args.v_stride_h = v.stride(2);
  args.eps = static_cast<float>(eps);
  switch (q.size(3)) {
    case 16: launch<T, 16>(args, stream); break;
    case 32: launch<T, 32>(args, stream); break;
    case 64: launch<T, 64>(args, stream); break;
    case 128: launch<T, 128>(args, stream); break;
    case 256: launch<T, 256>(args, stream); break;
    default:
      TORCH_CHECK(false, kOp, ": head dim ", std::to_string(q.size(3)), " is not compiled; supported: 16, 32, 64, "
                  "128, 256 (use the Triton kernel for others)");
  }
}

void check_on(const char* name, const at::Tensor& t, const at::Device& device, at::ScalarType dtype, int64_t dim) {
  TORCH_CHECK(t.device() == device, kOp, ": ", name, " is on ", t.device().str(), ", expected ", device.str(),
              " like q");
  TORCH_CHECK(t.scalar_type() == dtype, kOp, ": ", name, " has dtype ", c10::toString(t.scalar_type()),
              ", expected ", c10::toString(dtype));
  TORCH_CHECK(t.dim() == dim, kOp, ": ", name, " has shape ", shape_of(t), ", expected ", std::to_string(dim),
              " dimensions");
}

void check_size(const char* name, const at::Tensor& t, int64_t d, int64_t expected) {
  TORCH_CHECK(t.size(d) == expected, kOp, ": ", name, " has shape ", shape_of(t), ", expected size ",
              std::to_string(expected), " in dimension ", std::to_string(d));
}

void qk_norm_rope_append(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_norm_weight,
                         const at::Tensor& k_norm_weight, double eps, const at::Tensor& cos_table,
                         const at::Tensor& sin_table, at::Tensor& k_cache, at::Tensor& v_cache,
                         const at::Tensor& lengths, at::Tensor& q_out) {
  TORCH_CHECK(q.is_cuda(), kOp, ": q is on ", q.device().str(), ", expected a CUDA tensor");
  const at::Device device = q.device();
  const at::ScalarType dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::ScalarType::Float || dtype == at::ScalarType::BFloat16 || dtype == at::ScalarType::Half,
              kOp, ": q has dtype ", c10::toString(dtype), ", expected float32, bfloat16 or float16");
  TORCH_CHECK(q.dim() == 4, kOp, ": q has shape ", shape_of(q), ", expected [B, T, Hq, D]");
  const int64_t batch = q.size(0), tokens = q.size(1), q_heads = q.size(2), head_dim = q.size(3);
  check_on("k", k, device, dtype, 4);
  check_on("v", v, device, dtype, 4);
  const int64_t kv_heads = k.size(2);
  for (const auto* t : {&k, &v}) {
    const char* name = t == &k ? "k" : "v";
    check_size(name, *t, 0, batch);
    check_size(name, *t, 1, tokens);
    check_size(name, *t, 2, kv_heads);
    check_size(name, *t, 3, head_dim);
  }
  for (const auto* t : {&q, &k, &v}) {
    TORCH_CHECK(t->stride(3) == 1, kOp, ": q, k and v need channel stride 1; call .contiguous()");
  }
  TORCH_CHECK(kv_heads > 0 && q_heads % kv_heads == 0, kOp, ": q has ", std::to_string(q_heads), " heads, k and v ",
              std::to_string(kv_heads), "; expected a divisor of ", std::to_string(q_heads));
  check_on("q_norm_weight", q_norm_weight, device, dtype, 1);
  check_on("k_norm_weight", k_norm_weight, device, dtype, 1);
  check_size("q_norm_weight", q_norm_weight, 0, head_dim);
  check_size("k_norm_weight", k_norm_weight, 0, head_dim);
  check_on("cos_table", cos_table, device, at::ScalarType::Float, 2);
  check_on("sin_table", sin_table, device, at::ScalarType::Float, 2);
  check_size("cos_table", cos_table, 1, head_dim);
  check_size("sin_table", sin_table, 0, cos_table.size(0));
  check_size("sin_table", sin_table, 1, head_dim);
  check_on("k_cache", k_cache, device, dtype, 4);
  check_on("v_cache", v_cache, device, dtype, 4);
  for (const auto* t : {&k_cache, &v_cache}) {
    const char* name = t == &k_cache ? "k_cache" : "v_cache";
    check_size(name, *t, 0, batch);
    check_size(name, *t, 1, kv_heads);
    check_size(name, *t, 2, k_cache.size(2));
    check_size(name, *t, 3, head_dim);
  }
  check_on("lengths", lengths, device, at::ScalarType::Int, 1);
  check_size("lengths", lengths, 0, batch);
  check_on("q_out", q_out, device, dtype, 4);
  check_size("q_out", q_out, 0, batch);
  check_size("q_out", q_out, 1, q_heads);
  check_size("q_out", q_out, 2, tokens);
  check_size("q_out", q_out, 3, head_dim);
  const std::initializer_list<const at::Tensor*> dense = {&q_norm_weight, &k_norm_weight, &cos_table, &sin_table,
                                                          &k_cache, &v_cache, &lengths, &q_out};
  for (const at::Tensor* t : dense) {
    TORCH_CHECK(t->is_contiguous(), kOp, ": the norm weights, tables, caches, lengths and q_out must be "
                "contiguous; call .contiguous() first");
  }
  TORCH_CHECK(eps > 0, kOp, ": eps must be positive, found ", std::to_string(eps));
  if (q_out.numel() == 0) return;

  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (dtype) {
    case at::ScalarType::Float:
      launch_for_dtype<float>(q, k, v, q_norm_weight, k_norm_weight, eps, cos_table, sin_table, k_cache, v_cache,
                              lengths, q_out, stream);
      break;
    case at::ScalarType::BFloat16:
      launch_for_dtype<__nv_bfloat16>(q, k, v, q_norm_weight, k_norm_weight, eps, cos_table, sin_table, k_cache,
                                      v_cache, lengths, q_out, stream);
      break;
    default:
      launch_for_dtype<__half>(q, k, v, q_norm_weight, k_norm_weight, eps, cos_table, sin_table, k_cache, v_cache,
                               lengths, q_out, stream);
      break;
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bitdance_rt, m) {
  m.def("qk_norm_rope_append(Tensor q, Tensor k, Tensor v, Tensor q_norm_weight, Tensor k_norm_weight, float eps, "
        "Tensor cos_table, Tensor sin_table, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor lengths, "
        "Tensor(c!) q_out) -> ()");
}

TORCH_LIBRARY_IMPL(bitdance_rt, CUDA, m) { m.impl("qk_norm_rope_append", &qk_norm_rope_append); }
