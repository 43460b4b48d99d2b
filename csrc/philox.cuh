// Counter-based Gaussian noise on the device: Philox 4x32-10 and Box–Muller, keyed as
// bitdance_rt/reference/philox_noise.py defines (that module's docstring is the contract; keep the two in step).
//
// One call of keyed_normal_group gives the 4 standard normals of elements 4g .. 4g+3 of one request's noise:
// key = the two 32-bit words of the request's int64 seed, counter = (g, sample index, AR step, kNoiseStreamTag).
// float32 math throughout with the accurate library functions (logf, sincospif; never __logf / __sinf), so the
// result is within a few float32 ulp of the float64 reference. Build without --use_fast_math.
#pragma once

#include <cstdint>

namespace bitdance_rt {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;
constexpr uint32_t kNoiseStreamTag = 0x0B17DA9Cu;  // philox_noise.NOISE_STREAM_TAG
constexpr int kElementsPerGroup = 4;
constexpr int kUniformBits = 24;                  // top bits of a word kept for a uniform: exact in float32

struct PhiloxWords {
  uint32_t w[4];
};

// Philox 4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1).
__host__ __device__ inline PhiloxWords philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                                     uint32_t k0, uint32_t k1) {
#pragma unroll
  for (int round = 0; round < kPhiloxRounds; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  return PhiloxWords{{c0, c1, c2, c3}};
}

// Box–Muller of two words: u_radius = ((w0 >> 8) + 1)·2^-24 in (0, 1], u_angle = (w1 >> 8)·2^-24 in [0, 1);
// r = sqrt(−2·ln u_radius); (r·cos(2π·u_angle), r·sin(2π·u_angle)). 2·u_angle is exact, so sincospif sees the
// exact angle over π.
__device__ inline float2 box_muller(uint32_t w_radius, uint32_t w_angle) {
  constexpr int shift = 32 - kUniformBits;
  constexpr float scale = 1.0f / static_cast<float>(1u << kUniformBits);
  const float u_radius = static_cast<float>((w_radius >> shift) + 1u) * scale;
  const float u_angle = static_cast<float>(w_angle >> shift) * scale;
  const float radius = __fsqrt_rn(-2.0f * logf(u_radius));  // -2·log is exact; the root correctly rounded
  float sin_v, cos_v;
  sincospif(2.0f * u_angle, &sin_v, &cos_v);
  return make_float2(__fmul_rn(radius, cos_v), __fmul_rn(radius, sin_v));
}

// The 4 normals of group g (elements 4g .. 4g+3 of the request's noise) of sample `sample_index`.
__device__ inline float4 keyed_normal_group(int64_t seed, uint32_t ar_step, uint32_t sample_index, uint64_t group) {
  const uint64_t key = static_cast<uint64_t>(seed);
  const PhiloxWords words = philox4x32_10(static_cast<uint32_t>(group), sample_index, ar_step, kNoiseStreamTag,
                                          static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
  const float2 first = box_muller(words.w[0], words.w[1]);
  const float2 second = box_muller(words.w[2], words.w[3]);
  return make_float4(first.x, first.y, second.x, second.y);
}

__device__ inline float float4_lane(const float4& v, int lane) {
  return lane == 0 ? v.x : lane == 1 ? v.y : lane == 2 ? v.z : v.w;
}

}  // namespace bitdance_rt
