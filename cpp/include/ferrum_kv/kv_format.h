// The storage formats of K/V: every fact about each format in one place.
//
// Float formats (float32, float16, bfloat16) store a head region as [block_size][head_dim]
// elements. Quantized formats (int8, fp8_e4m3, fp8_e5m2, int4) store a head region as
//
//   codes  : [block_size][row_code_bytes] uint8
//   pad    : zero bytes up to a multiple of kHeadRegionAlignment from the head region start
//   params : [block_size][params_per_row] float32
//   pad    : zero bytes up to a multiple of kHeadRegionAlignment
//
// where a row is one (token, KV head) and its parameters are computed when it is written
// (docs/layout.md has the byte layout with a worked example). Definitions, in float32 arithmetic
// with round-to-nearest-even (no fused multiply-add anywhere):
//
//   int8     lo = min(row), hi = max(row); scale = (hi - lo) / 255 + 0; offset = lo + 0
//            (adding +0 turns a -0 into +0, so the parameters do not depend on which zero a
//            min/max over mixed-sign zeros returns);
//            code = scale == 0 ? 0 : clamp(rint((x - offset) / scale), 0, 255);
//            x_hat = offset + float(code) * scale            (two roundings: product, then sum)
//            params = (scale, offset)
//   int4     int8's definition with 15 for 255, per group of kInt4GroupSize consecutive elements
//            of the row (the last group is shorter when head_dim % 32 != 0); codes packed two per
//            byte, element 2i in the low nibble of byte i, element 2i+1 in the high nibble (an odd
//            head_dim leaves the last high nibble 0); params = (scale, offset) per group.
//   fp8_e4m3 OCP E4M3FN (bias 7, 3 mantissa bits, largest finite 448, subnormals down to 2^-9,
//            no infinities, S.1111.111 = NaN). scale = absmax(row) / 448;
//            code = scale == 0 ? 0 : e4m3_rne_saturating(x / scale); x_hat = decode(code) * scale
//            params = (scale)
//   fp8_e5m2 OCP E5M2 (bias 15, 2 mantissa bits, largest finite 57344, subnormals down to
//            2^-16, S.11111.00 = inf, S.11111.xx (xx != 0) = NaN), likewise with 57344.
//            In both, -0 (with scale != 0) quantizes to the code 0x80 (reads back as -0).
//
// A constant row reads back exactly (int: scale 0, codes 0, x_hat = offset; fp8: an all-zero row
// has scale 0 and codes 0). Input must be finite, and for int8/int4 max - min must not overflow
// float32 (|values| up to about 1.7e38); RowQuantizable checks a row. Each element is then kept
// within half a code step (int: scale / 2; fp8: half the FP8 spacing at x / scale, times scale)
// plus float32 rounding, as long as the scale is a normal float32; rows so small that it is
// subnormal (an fp8_e5m2 absmax below about 7e-34, an int8 range below about 3e-36) keep fewer
// bits, within their own magnitude.
// The NumPy oracle ferrum_kv.reference.quantize / dequantize implements these definitions
// independently; the SIMD write paths (cpp/src/kernels/quantize_*.cc) are bit-identical to the
// scalar functions here.
//
// Adding a format: a DType (types.h), a KvFormat<> specialisation below, one case in
// VisitQuantized, and the kernels' load-and-widen step.
//
// Thread safety: pure functions. Complexity: O(head_dim) per row.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

#include "ferrum_kv/dtype_convert.h"
#include "ferrum_kv/types.h"

namespace ferrum_kv {

inline constexpr int64_t kInt4GroupSize = 32;
inline constexpr int64_t kHeadRegionAlignment = 16;

inline constexpr int64_t RoundUp(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// ---- Scalar building blocks (the SIMD kernels port these operation by operation) ----------

// Asymmetric integer quantization with codes in [0, levels]. "+ 0.0f" makes a zero +0 (see the
// definitions above); it is never optimised away (not an identity for -0).
inline float AsymmetricScale(float lo, float hi, float levels) {
  return (hi - lo) / levels + 0.0f;
}
inline float AsymmetricOffset(float lo) { return lo + 0.0f; }
inline uint32_t AsymmetricCode(float x, float offset, float scale, float levels) {
  if (scale == 0.0f) return 0;
  const float q = std::nearbyint((x - offset) / scale);  // >= 0 for x >= offset
  // Clamped with comparisons that a NaN fails, so that input changed after RowQuantizable (by a
  // racing writer) gives an unspecified code, never an undefined conversion.
  return q >= levels ? uint32_t(levels) : q >= 0.0f ? uint32_t(q) : 0u;
}
inline float AsymmetricDecode(uint32_t code, float scale, float offset) {
  const float product = float(code) * scale;  // rounded on its own: no FMA
  return offset + product;
}

// FP8 parameters: bias, mantissa bits, largest finite code (positive) and its value.
struct Fp8Spec {
  int32_t exponent_bias;
  int32_t mantissa_bits;
  uint32_t max_code;  // largest finite positive code
  float max_value;    // its value
};
inline constexpr Fp8Spec kE4M3{7, 3, 0x7e, 448.0f};
inline constexpr Fp8Spec kE5M2{15, 2, 0x7b, 57344.0f};

// Round-to-nearest-even, saturating to +-max_value, of a finite float to an FP8 code.
// Normal results: the float's bits with the exponent rebiased and the mantissa rounded (integer
// arithmetic); results below the smallest normal 2^(1 - bias): adding 2^(1 - bias + 23 -
// mantissa_bits) makes the FPU round to the FP8 subnormal unit, and the low float bits are the
// code (a carry into the exponent gives the smallest normal's code, as it should).
inline uint8_t EncodeFp8(float value, const Fp8Spec& spec) {
  const uint32_t bits = FloatBits(value);
  const uint32_t sign = (bits >> 24) & 0x80u;
  const uint32_t magnitude = bits & 0x7fffffffu;
  const uint32_t drop = 23 - uint32_t(spec.mantissa_bits);
  const uint32_t min_normal_bits = uint32_t(127 + 1 - spec.exponent_bias) << 23;
  uint32_t code;
  if (magnitude < min_normal_bits) {
    const float magic = BitsToFloat(uint32_t(127 + 1 - spec.exponent_bias + int32_t(drop)) << 23);
    code = FloatBits(BitsToFloat(magnitude) + magic) - FloatBits(magic);
  } else {
    const uint32_t odd = (magnitude >> drop) & 1u;
    const uint32_t rounded = (magnitude + ((1u << (drop - 1)) - 1) + odd) >> drop;
    code = rounded - (uint32_t(127 - spec.exponent_bias) << spec.mantissa_bits);
    code = std::min(code, spec.max_code);
  }
  return uint8_t(sign | code);
}

// The exact float value of any FP8 code (NaN codes give NaN, E5M2 infinity codes infinity).
inline float DecodeFp8(uint8_t code, const Fp8Spec& spec) {
  const uint32_t sign = uint32_t(code & 0x80u) << 24;
  const uint32_t exponent = (code & 0x7fu) >> spec.mantissa_bits;
  const uint32_t mantissa = code & ((1u << spec.mantissa_bits) - 1);
  const uint32_t max_exponent = (0x7fu >> spec.mantissa_bits);
  const bool e4m3 = spec.mantissa_bits == 3;
  if (exponent == max_exponent && (!e4m3 || mantissa == ((1u << spec.mantissa_bits) - 1))) {
    if (mantissa == 0) return BitsToFloat(sign | 0x7f800000u);  // E5M2 infinity
    return BitsToFloat(sign | 0x7fc00000u);                       // NaN
  }
  if (exponent == 0) {  // subnormal: mantissa * 2^(1 - bias - mantissa_bits), exact
    const float unit = std::ldexp(1.0f, 1 - spec.exponent_bias - spec.mantissa_bits);
    return BitsToFloat(sign | FloatBits(float(mantissa) * unit));
  }
  return BitsToFloat(sign | ((exponent + uint32_t(127 - spec.exponent_bias)) << 23) |
                     (mantissa << (23 - spec.mantissa_bits)));
}

inline float AbsMax(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

// ---- Per-format facts ------------------------------------------------------------------------

// Every quantized format provides: kDType, kAsymmetric (codes offset by min: max - min must be
// finite), RowCodeBytes(head_dim), ParamsPerRow(head_dim),
// QuantizeRow(x, head_dim, codes, params) (RowQuantizable(x) holds) and
// Dequantize(codes, params, i) (element i of the row).
template <DType kFormat>
struct KvFormat;

namespace kv_format_internal {
// Quantizes n elements as one asymmetric group (int8: the row; int4: 32 elements) with codes in
// [0, levels]; writes its (scale, offset) to params[0..1].
template <typename Code>
void QuantizeAsymmetricGroup(const float* x, int64_t n, float levels, float* params,
                             Code* codes) {
  float lo = x[0], hi = x[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  const float scale = AsymmetricScale(lo, hi, levels);
  const float offset = AsymmetricOffset(lo);
  for (int64_t i = 0; i < n; ++i) codes[i] = Code(AsymmetricCode(x[i], offset, scale, levels));
  params[0] = scale;
  params[1] = offset;
}
}  // namespace kv_format_internal

template <>
struct KvFormat<DType::kInt8> {
  static constexpr DType kDType = DType::kInt8;
  static constexpr bool kAsymmetric = true;
  static constexpr float kLevels = 255.0f;
  static constexpr int64_t RowCodeBytes(int64_t head_dim) { return head_dim; }
  static constexpr int64_t ParamsPerRow(int64_t) { return 2; }
  static void QuantizeRow(const float* x, int64_t head_dim, uint8_t* codes, float* params) {
    kv_format_internal::QuantizeAsymmetricGroup(x, head_dim, kLevels, params, codes);
  }
  static float Dequantize(const uint8_t* codes, const float* params, int64_t i) {
    return AsymmetricDecode(codes[i], params[0], params[1]);
  }
};

template <>
struct KvFormat<DType::kInt4> {
  static constexpr DType kDType = DType::kInt4;
  static constexpr bool kAsymmetric = true;
  static constexpr float kLevels = 15.0f;
  static constexpr int64_t NumGroups(int64_t head_dim) {
    return (head_dim + kInt4GroupSize - 1) / kInt4GroupSize;
  }
  static constexpr int64_t RowCodeBytes(int64_t head_dim) { return (head_dim + 1) / 2; }
  static constexpr int64_t ParamsPerRow(int64_t head_dim) { return 2 * NumGroups(head_dim); }
  static void QuantizeRow(const float* x, int64_t head_dim, uint8_t* codes, float* params) {
    uint32_t group_codes[kInt4GroupSize];
    for (int64_t g = 0; g < NumGroups(head_dim); ++g) {
      const int64_t begin = g * kInt4GroupSize;
      const int64_t n = std::min(kInt4GroupSize, head_dim - begin);
      kv_format_internal::QuantizeAsymmetricGroup(x + begin, n, kLevels, &params[2 * g],
                                                  group_codes);
      for (int64_t i = 0; i < n; i += 2) {  // begin is even: groups start on a byte
        const uint32_t high = i + 1 < n ? group_codes[i + 1] : 0;
        codes[(begin + i) / 2] = uint8_t(group_codes[i] | (high << 4));
      }
    }
  }
  static float Dequantize(const uint8_t* codes, const float* params, int64_t i) {
    const uint32_t code = (codes[i / 2] >> ((i & 1) * 4)) & 0xfu;
    const int64_t g = i / kInt4GroupSize;
    return AsymmetricDecode(code, params[2 * g], params[2 * g + 1]);
  }
};

template <DType kFormat, const Fp8Spec& kSpec>
struct Fp8Format {
  static constexpr DType kDType = kFormat;
  static constexpr bool kAsymmetric = false;
  static constexpr const Fp8Spec& spec() { return kSpec; }
  static constexpr int64_t RowCodeBytes(int64_t head_dim) { return head_dim; }
  static constexpr int64_t ParamsPerRow(int64_t) { return 1; }
  static void QuantizeRow(const float* x, int64_t head_dim, uint8_t* codes, float* params) {
    const float scale = AbsMax(x, head_dim) / kSpec.max_value;
    for (int64_t i = 0; i < head_dim; ++i) {
      codes[i] = scale == 0.0f ? 0 : EncodeFp8(x[i] / scale, kSpec);
    }
    params[0] = scale;
  }
  static float Dequantize(const uint8_t* codes, const float* params, int64_t i) {
    return DecodeFp8(codes[i], kSpec) * params[0];
  }
};
template <>
struct KvFormat<DType::kFp8E4M3> : Fp8Format<DType::kFp8E4M3, kE4M3> {};
template <>
struct KvFormat<DType::kFp8E5M2> : Fp8Format<DType::kFp8E5M2, kE5M2> {};

// Calls f(KvFormat<d>{}) for the quantized dtype d; returns f's result. d must be quantized.
template <typename F>
decltype(auto) VisitQuantized(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kInt8: return f(KvFormat<DType::kInt8>{});
    case DType::kFp8E4M3: return f(KvFormat<DType::kFp8E4M3>{});
    case DType::kFp8E5M2: return f(KvFormat<DType::kFp8E5M2>{});
    default: return f(KvFormat<DType::kInt4>{});
  }
}

// Whether a quantized dtype is asymmetric (int8, int4: codes offset by the minimum).
inline bool IsAsymmetric(DType dtype) {
  return VisitQuantized(dtype, [](auto format) { return decltype(format)::kAsymmetric; });
}

// ---- Geometry of a head region ---------------------------------------------------------------

struct HeadRegionLayout {
  int64_t row_code_bytes = 0;  // bytes of one row (float formats: head_dim * element size)
  int64_t params_per_row = 0;  // float32 parameters per row; 0 for float formats
  int64_t params_offset = 0;   // byte offset of params[0] from the head region start
  int64_t bytes = 0;           // size of the head region (the next one starts there)
  int64_t row_params_bytes() const { return params_per_row * int64_t{sizeof(float)}; }
};

inline HeadRegionLayout HeadRegion(DType dtype, int64_t head_dim, int64_t block_size) {
  HeadRegionLayout layout;
  if (!IsQuantized(dtype)) {
    layout.row_code_bytes = head_dim * DTypeSize(dtype);
    layout.params_offset = block_size * layout.row_code_bytes;
    layout.bytes = layout.params_offset;
    return layout;
  }
  VisitQuantized(dtype, [&](auto format) {
    using Format = decltype(format);
    layout.row_code_bytes = Format::RowCodeBytes(head_dim);
    layout.params_per_row = Format::ParamsPerRow(head_dim);
  });
  layout.params_offset = RoundUp(block_size * layout.row_code_bytes, kHeadRegionAlignment);
  layout.bytes =
      RoundUp(layout.params_offset + block_size * layout.row_params_bytes(), kHeadRegionAlignment);
  return layout;
}

// ---- Rows ----------------------------------------------------------------------------------

// Whether a row can be quantized to dtype: every element finite and, for the asymmetric formats,
// max - min finite in float32. The write paths check every row before writing any.
inline bool RowQuantizable(DType dtype, const float* x, int64_t head_dim) {
  float lo = x[0], hi = x[0];
  bool finite = true;
  for (int64_t i = 0; i < head_dim; ++i) {
    finite &= std::isfinite(x[i]);
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  return finite && (!IsAsymmetric(dtype) || std::isfinite(hi - lo));
}

// Scalar quantize of one row of head_dim floats for which RowQuantizable holds.
inline void QuantizeRow(DType dtype, const float* x, int64_t head_dim, uint8_t* codes,
                        float* params) {
  VisitQuantized(dtype, [&](auto format) {
    decltype(format)::QuantizeRow(x, head_dim, codes, params);
  });
}

// out[i] = x_hat of element i, for i in [0, head_dim).
inline void DequantizeRow(DType dtype, const uint8_t* codes, const float* params,
                          int64_t head_dim, float* out) {
  VisitQuantized(dtype, [&](auto format) {
    for (int64_t i = 0; i < head_dim; ++i) out[i] = decltype(format)::Dequantize(codes, params, i);
  });
}

}  // namespace ferrum_kv
