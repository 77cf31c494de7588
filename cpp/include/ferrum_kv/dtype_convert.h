// Scalar conversions between float32 and the 16-bit storage types, bit-exact with NumPy's
// float32 -> float16 cast (round to nearest even, overflow to inf, subnormals kept) and with the
// usual bfloat16 rounding (round to nearest even on the upper 16 bits; NaN stays NaN).
// The attention kernels have SIMD versions of these; these are the reference and the slow path.
#pragma once

#include <cstdint>
#include <cstring>

#include "ferrum_kv/types.h"

namespace ferrum_kv {

inline uint32_t FloatBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

inline float BitsToFloat(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t FloatToHalfBits(float value) {
  const uint32_t bits = FloatBits(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {  // inf or NaN (NaN keeps a set quiet bit)
    return sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u | ((magnitude >> 13) & 0x3ffu) : 0u);
  }
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf
  if (magnitude < 0x38800000u) {  // below 2^-14: a half subnormal (or zero)
    // Adding 0.5 puts the half subnormal's units in the float's low mantissa bits; the FPU rounds
    // to nearest even for us.
    const float shifted = BitsToFloat(magnitude) + 0.5f;
    return sign | static_cast<uint16_t>(FloatBits(shifted) - 0x3f000000u);
  }
  const uint32_t mantissa_odd = (magnitude >> 13) & 1u;
  magnitude += 0xc8000fffu + mantissa_odd;  // rebias exponent by -112, round to nearest even
  return sign | static_cast<uint16_t>(magnitude >> 13);
}

inline float HalfBitsToFloat(uint16_t half) {
  const uint32_t sign = uint32_t(half & 0x8000u) << 16;
  const uint32_t exponent = (half >> 10) & 0x1fu;
  const uint32_t mantissa = half & 0x3ffu;
  if (exponent == 0x1f) return BitsToFloat(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    const float subnormal = float(mantissa) * (1.0f / 16777216.0f);  // mantissa * 2^-24
    return BitsToFloat(sign | FloatBits(subnormal));
  }
  return BitsToFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

inline uint16_t FloatToBFloat16Bits(float value) {
  const uint32_t bits = FloatBits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

inline float BFloat16BitsToFloat(uint16_t bf16) { return BitsToFloat(uint32_t(bf16) << 16); }

// dst[i] = src[i] converted to dtype (a float dtype; InvalidArgument for a quantized one), for
// i in [0, n).
void ConvertFromFloat32(const float* src, DType dtype, void* dst, int64_t n);
// dst[i] = float(src[i]) where src holds n elements of dtype.
void ConvertToFloat32(const void* src, DType dtype, float* dst, int64_t n);

}  // namespace ferrum_kv
