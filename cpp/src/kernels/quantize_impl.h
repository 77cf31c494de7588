// The SIMD quantize kernels, written once over a vector-traits class V and instantiated in
// quantize_avx512.cc (16 lanes) and quantize_avx2.cc (8 lanes). Each function performs, lane by
// lane, the same IEEE float32 operations as kv_format.h's scalar code (min/max, subtract, divide,
// round to nearest even; the FP8 encoding in integer arithmetic), so the results are
// bit-identical to it. Include only from a file compiled for V's instruction set.
//
// V provides: kW (lanes), F / I (float / int32 vectors), Load(const float*), LoadHalf(const
// uint16_t*) (float16 widened exactly), Set1, Min, Max, Sub, Div, Add, RoundToInt (RNE), MinU32
// (int32 lanes as unsigned), And/Or, ShiftRight<k>, AddI/SubI, Set1I, LessI (signed compare ->
// blend), Blend(mask, a, b) = mask ? a : b, AsInt/AsFloat (bit casts), ReduceMin/ReduceMax,
// AnyExponentAllOnes (a lane that is inf or NaN), StoreBytes(uint8_t* dst, I) (the low byte of
// each lane, kW bytes), StoreNibblePairs(uint8_t* dst, I) (lanes in [0, 15]: lane 2i | lane
// 2i+1 << 4, kW / 2 bytes).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "ferrum_kv/kv_format.h"
#include "kernels/quantize_kernels.h"

namespace ferrum_kv::kernels {

template <class V>
struct QuantizeKernels {
  using F = typename V::F;
  using I = typename V::I;
  static constexpr int64_t kW = V::kW;

  static F LoadFull(const float* p) { return V::Load(p); }
  static F LoadFull(const uint16_t* p) { return V::LoadHalf(p); }

  // Elements [0, n) of a float32 / float16 (uint16 bits) row as floats, n <= kW; lanes past n
  // hold *fill (an element of the row), so they change no min, max or absmax.
  template <typename T>
  static F LoadChunk(const T* row, int64_t n, const T* fill) {
    if (n == kW) return LoadFull(row);
    alignas(64) T buffer[kW];
    std::fill(buffer, buffer + kW, *fill);
    std::memcpy(buffer, row, size_t(n) * sizeof(T));
    return LoadFull(buffer);
  }

  // n codes (each in [0, 255]) to n bytes at dst.
  static void StoreCodes(uint8_t* dst, I codes, int64_t n) {
    if (n == kW) return V::StoreBytes(dst, codes);
    alignas(64) uint8_t buffer[kW];
    V::StoreBytes(buffer, codes);
    std::memcpy(dst, buffer, size_t(n));
  }

  // n codes (each in [0, 15]) packed two per byte to ceil(n / 2) bytes at dst, the even
  // element in the low nibble (an odd n leaves the last high nibble 0).
  static void StoreNibbles(uint8_t* dst, I codes, int64_t n) {
    if (n == kW) return V::StoreNibblePairs(dst, codes);
    alignas(64) uint8_t buffer[kW + 1];
    V::StoreBytes(buffer, codes);
    buffer[n] = 0;
    for (int64_t i = 0; i < n; i += 2) dst[i / 2] = uint8_t(buffer[i] | (buffer[i + 1] << 4));
  }

  template <typename T>
  static void MinMax(const T* x, int64_t n, float* lo, float* hi) {
    F vlo = LoadChunk(x, std::min(n, kW), x);
    F vhi = vlo;
    for (int64_t i = kW; i < n; i += kW) {
      const F v = LoadChunk(x + i, std::min(kW, n - i), x);
      vlo = V::Min(vlo, v);
      vhi = V::Max(vhi, v);
    }
    *lo = V::ReduceMin(vlo);
    *hi = V::ReduceMax(vhi);
  }

  // Asymmetric codes of n elements (one int8 row: a byte each; one int4 group: packed nibbles,
  // kNibbles).
  template <bool kNibbles, typename T>
  static void AsymmetricGroup(const T* x, int64_t n, float levels, float* params,
                              uint8_t* codes) {
    float lo, hi;
    MinMax(x, n, &lo, &hi);
    const float scale = AsymmetricScale(lo, hi, levels);
    const float offset = AsymmetricOffset(lo);
    params[0] = scale;
    params[1] = offset;
    if (scale == 0.0f) {
      std::memset(codes, 0, size_t(kNibbles ? (n + 1) / 2 : n));
      return;
    }
    const F vscale = V::Set1(scale), voffset = V::Set1(offset);
    const I vlevels = V::Set1I(int32_t(levels));
    for (int64_t i = 0; i < n; i += kW) {
      const int64_t m = std::min(kW, n - i);
      const F v = LoadChunk(x + i, m, x);
      const I q = V::MinU32(V::RoundToInt(V::Div(V::Sub(v, voffset), vscale)), vlevels);
      if constexpr (kNibbles) {
        StoreNibbles(codes + i / 2, q, m);  // i is a multiple of kW: even
      } else {
        StoreCodes(codes + i, q, m);
      }
    }
  }

  // FP8 codes of n elements scaled by 1 / scale (scale != 0): kv_format.h's EncodeFp8.
  template <typename T>
  static void Fp8Row(const T* x, int64_t n, float scale, const Fp8Spec& spec, uint8_t* codes) {
    const int32_t drop = 23 - spec.mantissa_bits;
    const F vscale = V::Set1(scale);
    const I abs_mask = V::Set1I(0x7fffffff);
    const I min_normal = V::Set1I((127 + 1 - spec.exponent_bias) << 23);
    const F magic = V::AsFloat(V::Set1I((127 + 1 - spec.exponent_bias + drop) << 23));
    const I magic_bits = V::AsInt(magic);
    const I half_minus_one = V::Set1I((1 << (drop - 1)) - 1);
    const I one = V::Set1I(1);
    const I rebias = V::Set1I((127 - spec.exponent_bias) << spec.mantissa_bits);
    const I max_code = V::Set1I(int32_t(spec.max_code));
    const I sign_byte = V::Set1I(0x80);
    for (int64_t i = 0; i < n; i += kW) {
      const int64_t m = std::min(kW, n - i);
      const I bits = V::AsInt(V::Div(LoadChunk(x + i, m, x), vscale));
      const I sign = V::And(V::template ShiftRight<24>(bits), sign_byte);
      const I magnitude = V::And(bits, abs_mask);
      const I subnormal = V::SubI(V::AsInt(V::Add(V::AsFloat(magnitude), magic)), magic_bits);
      const I odd = V::And(V::ShiftRightVar(magnitude, drop), one);
      const I rounded =
          V::ShiftRightVar(V::AddI(V::AddI(magnitude, half_minus_one), odd), drop);
      const I normal = V::MinU32(V::SubI(rounded, rebias), max_code);
      const I code = V::Blend(V::LessI(magnitude, min_normal), subnormal, normal);
      StoreCodes(codes + i, V::Or(code, sign), m);
    }
  }

  template <typename T>
  static void QuantizeRow(DType dtype, const T* x, int64_t d, uint8_t* codes, float* params) {
    switch (dtype) {
      case DType::kInt8:
        return AsymmetricGroup<false>(x, d, KvFormat<DType::kInt8>::kLevels, params, codes);
      case DType::kInt4: {
        for (int64_t begin = 0, g = 0; begin < d; begin += kInt4GroupSize, ++g) {
          AsymmetricGroup<true>(x + begin, std::min(kInt4GroupSize, d - begin),
                                KvFormat<DType::kInt4>::kLevels, params + 2 * g, codes + begin / 2);
        }
        return;
      }
      default: {
        const Fp8Spec& spec = dtype == DType::kFp8E4M3 ? kE4M3 : kE5M2;
        float lo, hi;
        MinMax(x, d, &lo, &hi);
        const float scale = std::max(std::fabs(lo), std::fabs(hi)) / spec.max_value;
        params[0] = scale;
        if (scale == 0.0f) {
          std::memset(codes, 0, size_t(d));
          return;
        }
        return Fp8Row(x, d, scale, spec, codes);
      }
    }
  }

  // Whether a row is quantizable (kv_format.h's RowQuantizable).
  template <typename T>
  static bool RowQuantizable(DType dtype, const T* x, int64_t d) {
    bool non_finite = false;
    for (int64_t i = 0; i < d; i += kW) {
      non_finite |= V::AnyExponentAllOnes(LoadChunk(x + i, std::min(kW, d - i), x));
    }
    if (non_finite) return false;
    if (!IsAsymmetric(dtype)) return true;
    float lo, hi;
    MinMax(x, d, &lo, &hi);
    return std::isfinite(hi - lo);
  }

  template <typename T>
  static int64_t FindUnquantizable(const QuantizeJob& job) {
    const T* src = static_cast<const T*>(job.src);
    for (int64_t r = 0; r < job.rows; ++r) {
      if (!RowQuantizable(job.dtype, src + r * job.head_dim, job.head_dim)) return r;
    }
    return -1;
  }

  template <typename T>
  static void Quantize(const QuantizeJob& job) {
    const T* src = static_cast<const T*>(job.src);
    for (int64_t r = 0; r < job.rows; ++r) {
      QuantizeRow(job.dtype, src + r * job.head_dim, job.head_dim,
                  job.codes + r * job.codes_stride,
                  reinterpret_cast<float*>(job.params + r * job.params_stride));
    }
  }

  static int64_t FindUnquantizableRow(const QuantizeJob& job) {
    return job.src_dtype == DType::kFloat32 ? FindUnquantizable<float>(job)
                                            : FindUnquantizable<uint16_t>(job);
  }
  static void QuantizeRows(const QuantizeJob& job) {
    job.src_dtype == DType::kFloat32 ? Quantize<float>(job) : Quantize<uint16_t>(job);
  }
};

}  // namespace ferrum_kv::kernels
