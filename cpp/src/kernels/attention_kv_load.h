// The attention kernel's load-and-widen step for each storage format (kv_format.h has the
// formats themselves): how a row of K or V is addressed and read into float vectors of an Isa
// (attention_tile_impl.h), in registers, never through a copy of the block.
//
// Float formats load the stored values. Quantized formats keep their parameters next to the
// codes (one float32 row of params per token), and
//   int8, fp8 ("folded"): a load gives u = the code - 128 (int8: centred, so that the folded
//     sums stay small and keep their float32 precision: uncentred codes cost up to 1.1e-5 in
//     the outputs) or the FP8 value times kUnit (fp8), and x_hat = offset + scale * u with
//     (scale, offset) = (FoldScale, FoldOffset)(params) (int8: offset + 128 scale; fp8: offset
//     0, and scale times 2^8 for E4M3, whose loads are the value times 2^-8: a shift and mask
//     to float16).
//     The tile kernel folds them instead of dequantizing: a score is scale * (q . u) + offset *
//     sum(q), a weight p becomes p * scale plus p * offset added to every column.
//   int4: a load gives x_hat itself (per group of 32 columns: code * scale + offset, one FMA).
// Columns: Load reads kW consecutive columns from c; LoadPairs (kPairs formats) reads the 2 kW
// columns from c (a multiple of 2 kW) as (even ones, odd ones) or the Isa's own pair order
// (bfloat16, LoadBf16Pairs). Rows are RowElems(d) Elem apart, and their parameters
// ParamsPerRow(d) floats apart.
//
// Isa provides, beside attention_tile_impl.h's list: LoadU8Centered(p) / LoadU8CenteredPartial(p,
// n) (bytes - 128 to floats, lanes past n 0), LoadFp8<kE4M3>(p) / LoadFp8Partial<kE4M3>(p, n) (FP8 codes to their value, times
// 2^-8 for E4M3), LoadNibbles(p, out) (kW bytes to out[0] = low nibbles, out[1] = high ones).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "ferrum_kv/kv_format.h"
#include "ferrum_kv/types.h"

namespace ferrum_kv::kernels {

template <class Isa, DType kDType>
struct KvLoad {
  using V = typename Isa::V;
  static constexpr int kW = Isa::kWidth;
  using Elem = std::conditional_t<kDType == DType::kFloat32, float,
                                  std::conditional_t<IsQuantized(kDType), uint8_t, uint16_t>>;
  static constexpr bool kQuantized = IsQuantized(kDType);
  static constexpr bool kE4M3 = kDType == DType::kFp8E4M3;
  static constexpr bool kFp8 = kE4M3 || kDType == DType::kFp8E5M2;
  static constexpr bool kFolded = kFp8 || kDType == DType::kInt8;
  static constexpr bool kOffset = kDType == DType::kInt8;  // Fold's offset is not always 0
  static constexpr bool kPairs = kDType == DType::kBFloat16 || kDType == DType::kInt4;
  // fp8 loads are the code's value times kUnit (exact: a power of two).
  static constexpr float kUnit = kE4M3 ? 1.0f / 256.0f : 1.0f;

  static int64_t RowElems(int d) { return kDType == DType::kInt4 ? (d + 1) / 2 : d; }
  static int ParamsPerRow(int d) {
    if constexpr (kQuantized) {
      return static_cast<int>(KvFormat<kDType>::ParamsPerRow(d));
    } else {
      return 0;
    }
  }
  // (scale, offset) of a folded row: x_hat = offset + scale * load.
  static float FoldScale(const float* params) { return params[0] / kUnit; }
  static float FoldOffset(const float* params) {
    return kOffset ? params[1] + 128.0f * params[0] : 0.0f;
  }

  // kW columns c, c + 1, ... of row (c even for int4).
  static V Load(const Elem* row, const float* params, int c) {
    if constexpr (kDType == DType::kFloat32) return Isa::Load(row + c);
    if constexpr (kDType == DType::kFloat16) return Isa::LoadHalf(row + c);
    if constexpr (kDType == DType::kBFloat16) return Isa::LoadBf16(row + c);
    if constexpr (kDType == DType::kInt8) return Isa::LoadU8Centered(row + c);
    if constexpr (kFp8) return Isa::template LoadFp8<kE4M3>(row + c);
    if constexpr (kDType == DType::kInt4) return Int4InOrder(row, params, c, kW);
  }
  // The first n < kW of them (the other lanes 0).
  static V LoadPartial(const Elem* row, const float* params, int c, int n) {
    if constexpr (kDType == DType::kFloat32) return Isa::LoadPartial(row + c, n);
    if constexpr (kDType == DType::kFloat16) return Isa::LoadHalfPartial(row + c, n);
    if constexpr (kDType == DType::kBFloat16) return Isa::LoadBf16Partial(row + c, n);
    if constexpr (kDType == DType::kInt8) return Isa::LoadU8CenteredPartial(row + c, n);
    if constexpr (kFp8) return Isa::template LoadFp8Partial<kE4M3>(row + c, n);
    if constexpr (kDType == DType::kInt4) return Int4InOrder(row, params, c, n);
  }
  // The 2 kW columns from c (a multiple of 2 kW), kPairs formats only.
  static void LoadPairs(const Elem* row, const float* params, int c, V* out) {
    if constexpr (kDType == DType::kBFloat16) {
      Isa::LoadBf16Pairs(row + c, out);
    } else if constexpr (kDType == DType::kInt4) {
      // 2 kW divides the group size: one group's parameters for both vectors.
      const float* group = params + 2 * (c / kInt4GroupSize);
      const V scale = Isa::Set1(group[0]);
      const V offset = Isa::Set1(group[1]);
      Isa::LoadNibbles(row + c / 2, out);
      out[0] = Isa::Fma(out[0], scale, offset);
      out[1] = Isa::Fma(out[1], scale, offset);
    }
  }

 private:
  // int4 columns [c, c + n) in order (head_dim tails only): element by element.
  static V Int4InOrder(const uint8_t* row, const float* params, int c, int n) {
    alignas(64) float values[kW] = {};
    for (int i = 0; i < n; ++i) {
      const int column = c + i;
      const uint32_t code = (row[column / 2] >> ((column & 1) * 4)) & 0xfu;
      const float* group = params + 2 * (column / kInt4GroupSize);
      values[i] = float(code) * group[0] + group[1];
    }
    return Isa::Load(values);
  }
};

}  // namespace ferrum_kv::kernels
