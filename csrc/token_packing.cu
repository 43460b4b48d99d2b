// Binary tokens as bits on the device: torch.ops.bitdance_rt.pack_signs / unpack_signs / bit_linear.
//
// Bit order (bitdance_rt/reference/token_packing.py): bit c of int32 word w is set iff token[..., 32·w + c] > 0
// (bit 31 is the sign bit; 0, -0.0 and NaN pack as a clear bit).
// - pack_signs(tokens [..., C] float32/bf16/fp16, words [..., C/32] int32): both contiguous, C a multiple of 32.
// - unpack_signs(words [..., W] int32, tokens [..., 32·W]): ±1 in tokens' dtype.
// - bit_linear(words [R, W] int32, weight [H, 32·W], bias [H] or None, out [R, H]): the projector's first layer
//   straight from the bits, out[r, o] = bias[o] + Σ_c s(r, c)·W[o, c] with s = +1 for a set bit, −1 otherwise;
//   float32 accumulation in channel order, one rounding to the weight's dtype at the end.
//
// pack/unpack work on the raw bits of the floats: one thread owns 8 channels (a byte of a word), loaded or stored
// as 16-byte vectors when the tensors are 16-byte aligned; the 4 threads of a word OR their bytes with two
// warp shuffles. No float arithmetic: results are exact.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include "float_convert.cuh"

namespace {

constexpr int kBitsPerWord = 32;
constexpr int kChannelsPerThread = 8;  // one byte of a word
constexpr int kThreadsPerWord = kBitsPerWord / kChannelsPerThread;
constexpr int kPackThreads = 256;
constexpr int64_t kMaxPackBlocks = 4096;  // about 4 waves of an H100; grid-stride beyond

// The raw bits of a float dtype: the pattern of +1.0, the sign bit and +inf (above it: NaN).
template <typename Bits, Bits kOne, Bits kInf>
struct RawFloat {
  using bits_t = Bits;
  static constexpr Bits one = kOne;
  static constexpr Bits sign = static_cast<Bits>(Bits{1} << (8 * sizeof(Bits) - 1));
  static constexpr Bits minus_one = static_cast<Bits>(kOne | sign);
  // x > 0: sign bit clear, not ±0 and not NaN (+inf counts as positive).
  __device__ static bool positive(Bits x) { return x != 0 && x <= kInf; }
};
using RawFloat32 = RawFloat<uint32_t, 0x3F800000u, 0x7F800000u>;
using RawBFloat16 = RawFloat<uint16_t, 0x3F80u, 0x7F80u>;
using RawFloat16 = RawFloat<uint16_t, 0x3C00u, 0x7C00u>;

// 8 consecutive raw values and their view as 16-byte vectors (one for 16-bit dtypes, two for float32).
template <typename Bits>
union EightValues {
  static constexpr int kVectors = sizeof(Bits) * kChannelsPerThread / sizeof(uint4);
  uint4 vectors[kVectors];
  Bits values[kChannelsPerThread];
};

template <typename Bits, bool kVectorized>
__device__ inline void load_eight(const Bits* src, EightValues<Bits>& dst) {
  if constexpr (kVectorized) {
    const uint4* vec = reinterpret_cast<const uint4*>(src);
#pragma unroll
    for (int i = 0; i < EightValues<Bits>::kVectors; ++i) dst.vectors[i] = vec[i];
  } else {
#pragma unroll
    for (int i = 0; i < kChannelsPerThread; ++i) dst.values[i] = src[i];
  }
}

template <typename Bits, bool kVectorized>
__device__ inline void store_eight(Bits* dst, const EightValues<Bits>& src) {
  if constexpr (kVectorized) {
    uint4* vec = reinterpret_cast<uint4*>(dst);
#pragma unroll
    for (int i = 0; i < EightValues<Bits>::kVectors; ++i) vec[i] = src.vectors[i];
  } else {
#pragma unroll
    for (int i = 0; i < kChannelsPerThread; ++i) dst[i] = src.values[i];
  }
}

// Thread g (grid-stride) packs channels [8g, 8g + 8): byte g % 4 of word g / 4. The loop bound is block-uniform,
// so every lane reaches the shuffles.
template <typename Raw, bool kVectorized>
__global__ void pack_signs_kernel(const typename Raw::bits_t* __restrict__ tokens, int32_t* __restrict__ words,
                                  int64_t num_words) {
  using Bits = typename Raw::bits_t;
  const int64_t num_groups = num_words * kThreadsPerWord;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x; first < num_groups; first += stride) {
    const int64_t group = first + threadIdx.x;
    const int quarter = static_cast<int>(group % kThreadsPerWord);
    uint32_t part = 0;
    if (group < num_groups) {
      EightValues<Bits> x;
      load_eight<Bits, kVectorized>(tokens + group * kChannelsPerThread, x);
#pragma unroll
      for (int i = 0; i < kChannelsPerThread; ++i) part |= static_cast<uint32_t>(Raw::positive(x.values[i])) << i;
      part <<= kChannelsPerThread * quarter;
    }
    part |= __shfl_xor_sync(0xFFFFFFFFu, part, 1);
    part |= __shfl_xor_sync(0xFFFFFFFFu, part, 2);
    if (group < num_groups && quarter == 0) words[group / kThreadsPerWord] = static_cast<int32_t>(part);
  }
}

// Thread g (grid-stride) writes channels [8g, 8g + 8) from byte g % 4 of word g / 4.
template <typename Raw, bool kVectorized>
__global__ void unpack_signs_kernel(const int32_t* __restrict__ words, typename Raw::bits_t* __restrict__ tokens,
                                    int64_t num_words) {
  using Bits = typename Raw::bits_t;
  const int64_t num_groups = num_words * kThreadsPerWord;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; group < num_groups;
       group += stride) {
    const uint32_t word = static_cast<uint32_t>(words[group / kThreadsPerWord]);
    const uint32_t byte = (word >> (kChannelsPerThread * (group % kThreadsPerWord))) & 0xFFu;
    EightValues<Bits> x;
#pragma unroll
    for (int i = 0; i < kChannelsPerThread; ++i) x.values[i] = ((byte >> i) & 1u) ? Raw::one : Raw::minus_one;
    store_eight<Bits, kVectorized>(tokens + group * kChannelsPerThread, x);
  }
}

// ------------------------------------------------------------------------------------------------ bit_linear

constexpr int kLinearThreads = 256;
constexpr int kOutputLanes = 16;                               // threads across a block's outputs
constexpr int kRowLanes = kLinearThreads / kOutputLanes;       // threads across its rows
constexpr int kOutputsPerThread = 8;                           // two groups of 4 adjacent outputs
constexpr int kLinearOutputs = kOutputLanes * kOutputsPerThread;  // 128 outputs per block
constexpr int kTilePad = 4;  // row padding of the staged weights: 4-way store conflicts, aligned float4 reads
constexpr int64_t kLargeLinearRows = 2048;  // from here on, 4 rows per thread

using bdrt::from_float;
using bdrt::to_float;

// s(r, c) as a float: +1 for a set bit, −1 for a clear one, from the complemented word (its bit c set: −1).
template <int kChannel>
__device__ inline float sign_of_bit(uint32_t complemented_word) {
  return __uint_as_float(0x3F800000u | ((complemented_word << (kBitsPerWord - 1 - kChannel)) & 0x80000000u));
}

template <int kChannel, int kRowsPerThread>
__device__ inline void accumulate_channel(const float (&tile)[kBitsPerWord][kLinearOutputs + kTilePad],
                                          const uint32_t (&complemented)[kRowsPerThread], int output_lane,
                                          float (&acc)[kRowsPerThread][kOutputsPerThread]) {
  const float4 low = *reinterpret_cast<const float4*>(&tile[kChannel][4 * output_lane]);
  const float4 high = *reinterpret_cast<const float4*>(&tile[kChannel][kLinearOutputs / 2 + 4 * output_lane]);
  const float w[kOutputsPerThread] = {low.x, low.y, low.z, low.w, high.x, high.y, high.z, high.w};
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const float s = sign_of_bit<kChannel>(complemented[i]);
#pragma unroll
    for (int j = 0; j < kOutputsPerThread; ++j) acc[i][j] = fmaf(s, w[j], acc[i][j]);  // acc ± w, one rounding
  }
}

template <int kRowsPerThread, int... kChannels>
__device__ inline void accumulate_word(const float (&tile)[kBitsPerWord][kLinearOutputs + kTilePad],
                                       const uint32_t (&complemented)[kRowsPerThread], int output_lane,
                                       float (&acc)[kRowsPerThread][kOutputsPerThread],
                                       std::integer_sequence<int, kChannels...>) {
  (accumulate_channel<kChannels, kRowsPerThread>(tile, complemented, output_lane, acc), ...);
}

// Block (x, y): rows [R0, R0 + 16·kRowsPerThread) × outputs [128y, 128y + 128). Thread (row lane a, output lane
// b) owns rows R0 + a + 16·i and outputs 128y + 4b + {0..3} and 128y + 64 + 4b + {0..3}: a register tile of
// kRowsPerThread × 8 float32 accumulators. Per word of the rows (32 channels) the block stages W[outputs,
// channels] in shared memory as float32 [channel][output] and the rows' complemented words; then for each
// channel a thread reads its 8 weights (two float4) and adds them, signed by each of its rows' bit, by FMA with
// ±1 (exact: acc ± w rounded once). Bias added at the end in float32, one rounding to T.
template <typename T, int kRowsPerThread>
__global__ void __launch_bounds__(kLinearThreads)
    bit_linear_kernel(const int32_t* __restrict__ words, const T* __restrict__ weight, const T* __restrict__ bias,
                      T* __restrict__ out, int64_t rows, int64_t outputs, int64_t num_words) {
  constexpr int kBlockRows = kRowLanes * kRowsPerThread;
  __shared__ alignas(16) float tile[kBitsPerWord][kLinearOutputs + kTilePad];
  __shared__ uint32_t row_words[kBlockRows];
  const int output_lane = threadIdx.x % kOutputLanes;
  const int row_lane = threadIdx.x / kOutputLanes;
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * kBlockRows;
  const int64_t first_output = static_cast<int64_t>(blockIdx.y) * kLinearOutputs;
  const int64_t channels = num_words * kBitsPerWord;

  float acc[kRowsPerThread][kOutputsPerThread];
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
#pragma unroll
    for (int j = 0; j < kOutputsPerThread; ++j) acc[i][j] = 0.0f;
  }

  for (int64_t w = 0; w < num_words; ++w) {
    __syncthreads();  // the previous word's tiles are consumed
    for (int i = threadIdx.x; i < kBitsPerWord * kLinearOutputs; i += kLinearThreads) {
      const int o = i / kBitsPerWord, c = i % kBitsPerWord;  // a warp reads one output's 32 channels: coalesced
      const int64_t global_o = first_output + o;
      tile[c][o] = global_o < outputs ? to_float(weight[global_o * channels + w * kBitsPerWord + c]) : 0.0f;
    }
    for (int i = threadIdx.x; i < kBlockRows; i += kLinearThreads) {
      const int64_t row = first_row + i;
      row_words[i] = row < rows ? ~static_cast<uint32_t>(words[row * num_words + w]) : 0u;
    }
    __syncthreads();
    uint32_t complemented[kRowsPerThread];
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) complemented[i] = row_words[row_lane + kRowLanes * i];
    accumulate_word<kRowsPerThread>(tile, complemented, output_lane, acc,
                                    std::make_integer_sequence<int, kBitsPerWord>{});
  }

  float b[kOutputsPerThread];
  int64_t output[kOutputsPerThread];
#pragma unroll
  for (int j = 0; j < kOutputsPerThread; ++j) {
    output[j] = first_output + (j / 4) * (kLinearOutputs / 2) + 4 * output_lane + j % 4;
    b[j] = bias != nullptr && output[j] < outputs ? to_float(bias[output[j]]) : 0.0f;
  }
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int64_t row = first_row + row_lane + kRowLanes * i;
    if (row >= rows) continue;
#pragma unroll
    for (int j = 0; j < kOutputsPerThread; ++j) {
      if (output[j] < outputs) out[row * outputs + output[j]] = from_float<T>(acc[i][j] + b[j]);
    }
  }
}

// ------------------------------------------------------------------------------------------------ host side
// Messages format numbers with std::to_string, never through an ostream: an extension built by
// torch.utils.cpp_extension on the lent H100 image crashed inside std::ostream's integer insertion (seen in
// c10::str while a check failed), so no check streams an integer or a shape.

std::string shape_of(const at::Tensor& t) {
  std::string text = "[";
  for (int64_t d = 0; d < t.dim(); ++d) text += (d ? ", " : "") + std::to_string(t.size(d));
  return text + "]";
}

void check_cuda_contiguous(const char* op, const char* name, const at::Tensor& t, const at::Device& device) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " is on ", t.device().str(), ", expected a CUDA tensor; move it with "
              ".cuda()");
  TORCH_CHECK(t.device() == device, op, ": ", name, " is on ", t.device().str(), ", expected ", device.str(),
              " like the other inputs");
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous; call .contiguous() first");
}

bool is_float_dtype(at::ScalarType t) {
  return t == at::ScalarType::Float || t == at::ScalarType::BFloat16 || t == at::ScalarType::Half;
}

int64_t pack_blocks(int64_t num_words) {
  const int64_t groups = num_words * kThreadsPerWord;
  const int64_t blocks = (groups + kPackThreads - 1) / kPackThreads;
  return blocks < kMaxPackBlocks ? blocks : kMaxPackBlocks;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename Raw>
void launch_pack(const at::Tensor& tokens, at::Tensor& words, int64_t num_words, cudaStream_t stream) {
  using Bits = typename Raw::bits_t;
  const auto* src = static_cast<const Bits*>(tokens.data_ptr());
  auto* dst = static_cast<int32_t*>(words.data_ptr());
  const dim3 grid(static_cast<unsigned>(pack_blocks(num_words)));
  if (aligned16(src)) {
    pack_signs_kernel<Raw, true><<<grid, kPackThreads, 0, stream>>>(src, dst, num_words);
  } else {
    pack_signs_kernel<Raw, false><<<grid, kPackThreads, 0, stream>>>(src, dst, num_words);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename Raw>
void launch_unpack(const at::Tensor& words, at::Tensor& tokens, int64_t num_words, cudaStream_t stream) {
  using Bits = typename Raw::bits_t;
  const auto* src = static_cast<const int32_t*>(words.data_ptr());
  auto* dst = static_cast<Bits*>(tokens.data_ptr());
  const dim3 grid(static_cast<unsigned>(pack_blocks(num_words)));
  if (aligned16(dst)) {
    unpack_signs_kernel<Raw, true><<<grid, kPackThreads, 0, stream>>>(src, dst, num_words);
  } else {
    unpack_signs_kernel<Raw, false><<<grid, kPackThreads, 0, stream>>>(src, dst, num_words);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Shape rule shared by pack and unpack: tokens [..., 32·W] against words [..., W].
void check_packed_shapes(const char* op, const at::Tensor& tokens, const at::Tensor& words) {
  bool same = tokens.dim() >= 1 && tokens.dim() == words.dim() && tokens.size(-1) == words.size(-1) * kBitsPerWord;
  for (int64_t d = 0; same && d + 1 < tokens.dim(); ++d) same = tokens.size(d) == words.size(d);
  TORCH_CHECK(same, op, ": tokens ", shape_of(tokens), " and words ", shape_of(words), " do not match; expected "
              "tokens [..., 32·W] and words [..., W] (32 channels per int32 word)");
}

void pack_signs(const at::Tensor& tokens, at::Tensor& words) {
  constexpr const char* op = "pack_signs";
  check_cuda_contiguous(op, "tokens", tokens, tokens.device());
  check_cuda_contiguous(op, "words", words, tokens.device());
  TORCH_CHECK(is_float_dtype(tokens.scalar_type()), op, ": tokens has dtype ", c10::toString(tokens.scalar_type()),
              ", expected float32, bfloat16 or float16");
  TORCH_CHECK(words.scalar_type() == at::ScalarType::Int, op, ": words has dtype ",
              c10::toString(words.scalar_type()), ", expected int32");
  check_packed_shapes(op, tokens, words);
  const int64_t num_words = words.numel();
  if (num_words == 0) return;
  const c10::cuda::CUDAGuard guard(tokens.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (tokens.scalar_type()) {
    case at::ScalarType::Float: launch_pack<RawFloat32>(tokens, words, num_words, stream); break;
    case at::ScalarType::BFloat16: launch_pack<RawBFloat16>(tokens, words, num_words, stream); break;
    default: launch_pack<RawFloat16>(tokens, words, num_words, stream); break;
  }
}

void unpack_signs(const at::Tensor& words, at::Tensor& tokens) {
  constexpr const char* op = "unpack_signs";
  check_cuda_contiguous(op, "words", words, words.device());
  check_cuda_contiguous(op, "tokens", tokens, words.device());
  TORCH_CHECK(words.scalar_type() == at::ScalarType::Int, op, ": words has dtype ",
              c10::toString(words.scalar_type()), ", expected int32");
  TORCH_CHECK(is_float_dtype(tokens.scalar_type()), op, ": tokens has dtype ", c10::toString(tokens.scalar_type()),
              ", expected float32, bfloat16 or float16");
  check_packed_shapes(op, tokens, words);
  const int64_t num_words = words.numel();
  if (num_words == 0) return;
  const c10::cuda::CUDAGuard guard(words.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (tokens.scalar_type()) {
    case at::ScalarType::Float: launch_unpack<RawFloat32>(words, tokens, num_words, stream); break;
    case at::ScalarType::BFloat16: launch_unpack<RawBFloat16>(words, tokens, num_words, stream); break;
    default: launch_unpack<RawFloat16>(words, tokens, num_words, stream); break;
  }
}

template <typename T, int kRowsPerThread>
void launch_bit_linear(const at::Tensor& words, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       at::Tensor& out, int64_t rows, int64_t outputs, int64_t num_words, cudaStream_t stream) {
  constexpr int64_t block_rows = kRowLanes * kRowsPerThread;
  const dim3 grid(static_cast<unsigned>((rows + block_rows - 1) / block_rows),
                  static_cast<unsigned>((outputs + kLinearOutputs - 1) / kLinearOutputs));
  bit_linear_kernel<T, kRowsPerThread><<<grid, kLinearThreads, 0, stream>>>(
      static_cast<const int32_t*>(words.data_ptr()), static_cast<const T*>(weight.data_ptr()),
      bias.has_value() ? static_cast<const T*>(bias->data_ptr()) : nullptr, static_cast<T*>(out.data_ptr()), rows,
      outputs, num_words);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_bit_linear_for_rows(const at::Tensor& words, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::Tensor& out, int64_t rows,
                                int64_t outputs, int64_t num_words, cudaStream_t stream) {
  if (rows >= kLargeLinearRows) {
    launch_bit_linear<T, 4>(words, weight, bias, out, rows, outputs, num_words, stream);
  } else {
    launch_bit_linear<T, 1>(words, weight, bias, out, rows, outputs, num_words, stream);
  }
}

void bit_linear(const at::Tensor& words, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                at::Tensor& out) {
  constexpr const char* op = "bit_linear";
  const at::Device device = words.device();
  check_cuda_contiguous(op, "words", words, device);
  check_cuda_contiguous(op, "weight", weight, device);
  check_cuda_contiguous(op, "out", out, device);
  TORCH_CHECK(words.scalar_type() == at::ScalarType::Int && words.dim() == 2, op, ": words must be int32 [R, W], "
              "found ", c10::toString(words.scalar_type()), " of shape ", shape_of(words));
  const int64_t rows = words.size(0), num_words = words.size(1);
  TORCH_CHECK(is_float_dtype(weight.scalar_type()), op, ": weight has dtype ", c10::toString(weight.scalar_type()),
              ", expected float32, bfloat16 or float16");
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == num_words * kBitsPerWord, op, ": weight has shape ",
              shape_of(weight), ", expected [H, ", std::to_string(num_words * kBitsPerWord),
              "] (32 channels per word)");
  const int64_t outputs = weight.size(0);
  if (bias.has_value()) {
    check_cuda_contiguous(op, "bias", *bias, device);
    TORCH_CHECK(bias->scalar_type() == weight.scalar_type() && bias->dim() == 1 && bias->size(0) == outputs, op,
                ": bias must be [", std::to_string(outputs), "] of weight's dtype, found ",
                c10::toString(bias->scalar_type()), " of shape ", shape_of(*bias));
  }
  TORCH_CHECK(out.scalar_type() == weight.scalar_type() && out.dim() == 2 && out.size(0) == rows &&
                  out.size(1) == outputs,
              op, ": out must be [", std::to_string(rows), ", ", std::to_string(outputs), "] of weight's dtype, "
              "found ", c10::toString(out.scalar_type()), " of shape ", shape_of(out));
  TORCH_CHECK((outputs + kLinearOutputs - 1) / kLinearOutputs <= 65535, op, ": ", std::to_string(outputs),
              " outputs exceed the grid's 65535 tiles of 128; split the weight's rows");
  if (rows == 0 || outputs == 0) return;  // no words (C = 0) still launches: out = bias, or 0
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (weight.scalar_type()) {
    case at::ScalarType::Float:
      launch_bit_linear_for_rows<float>(words, weight, bias, out, rows, outputs, num_words, stream);
      break;
    case at::ScalarType::BFloat16:
      launch_bit_linear_for_rows<__nv_bfloat16>(words, weight, bias, out, rows, outputs, num_words, stream);
      break;
    default:
      launch_bit_linear_for_rows<__half>(words, weight, bias, out, rows, outputs, num_words, stream);
      break;
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bitdance_rt, m) {
  m.def("pack_signs(Tensor tokens, Tensor(a!) words) -> ()");
  m.def("unpack_signs(Tensor words, Tensor(a!) tokens) -> ()");
  m.def("bit_linear(Tensor words, Tensor weight, Tensor? bias, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(bitdance_rt, CUDA, m) {
  m.impl("pack_signs", &pack_signs);
  m.impl("unpack_signs", &unpack_signs);
  m.impl("bit_linear", &bit_linear);
}
