// The "fast" precision's tile kernel over int8 K/V (attention.h, kv_format.h), written once over
// the way Q.K is computed (Scorer) and included by the files that instantiate it:
// attention_quant_avx512fast.cc (AVX512-VNNI dot products, "avx512") and attention_quant_amx.cc
// (AMX-INT8 tiles, "amx"); attention.cc calls them only after checking the instructions at run
// time. Integer dot products on the stored codes, never a float copy of them.
//
// What it computes, for the narrow tiles of decode (fewer rows than 16; wider tiles, i.e. prefill,
// run the exact kernel TileKernel<Avx512, dtype>, see BENCHMARKS.md): the same online-softmax
// state as the exact kernel (attention_tile.h), with
//   Q.K  (Scorer) each query row q (already times the softmax scale) is quantized once per tile to two
//        int8 digits, symmetric: q_scale = absmax(q) / 127, hi = round-to-nearest-even(q /
//        q_scale) in [-127, 127], lo = the same of (q - q_scale hi) / (q_scale / 256), clamped
//        to [-127, 127]; q~ = q_scale (hi + lo / 256) is within q_scale / 512 of q. (One digit,
//        the int8 query, measured 1.2-2.6e-2 relative error on the attention tests'
//        grids, whose keys have outlier channels and whose softmax is peaked: over the 1.5e-2
//        bound. The second digit costs one more vpdpbusd per 64 columns and row.) With a key
//        row's codes c (u8) and (scale, offset), x_hat = offset + scale c (kv_format.h), the
//        score is q~ . x_hat, computed as
//          scale * (q_scale / 256) * (256 dot(c, hi) + dot(c, lo)) + offset * sum(q~)
//        where each dot is exact in int32 (u8 codes times s8 digits, vpdpbusd or tdpbusd;
//        |dot| <= 255 * 127 * head_dim) and 256 dot(c, hi) + dot(c, lo) is rounded once to float32. The offset term uses q~'s sum, not q's: the
//        codes are not centred (vpdpbusd needs them unsigned), so with q's own sum the query's
//        rounding error would be multiplied by x_hat - offset (up to the row's range) instead of
//        by x_hat; with q~'s sum the score is q~ . x_hat up to float32 rounding.
//   P.V  per row and span of at most 64 keys (one block at most), the weights w = p * v_scale
//        (softmax weight times the value row's scale) are quantized to int16 against the span's
//        largest, w16 = round(w * 32767 / max w), and acc += (max w / 32767) * sum_j w16_j c_j
//        with the codes of two keys side by side in each 32-bit lane (vpdpwssd; a span's sum
//        stays below 64 * 255 * 32767 < 2^31); the value offsets add sum_j p_j offset_j (float32)
//        to every column.
// Error: the query's digits (within 1/65,000 of absmax(q) per component) and the int16 weights
// (1/65,000 of the span's largest): at most 3.6e-4 relative against a float64 reference on the
// dequantized values over the attention tests' grids (test_attention_quantized_fast.py), below
// the 1.5e-2. Inputs: what the exact kernel takes (finite q, finite parameters).
// Layout: acc is kept in a buffer of rows x RoundUp(head_dim, 64) floats whose 64-column blocks
// are in the unpack order of the codes (Position below) and copied back in order at the end.
// Thread safety: reentrant (state on the stack and in the tile's own outputs).
// Complexity: P.V costs per key pair and query row head_dim / 16 vpdpwssd; Q.K is the Scorer's.
//
// A Scorer<Tile> is constructed once per tile as Scorer(tile, q8, dp) (q8: row r's digits hi and
// lo at q8[2 r dp] and q8[(2 r + 1) dp], zero past head_dim; dp a multiple of 64) and writes, per
// span, Score(pos, n, k, scores, next): scores[r * kSpanTokens + j] = 256 dot(hi[r], codes of key
// j) + dot(lo[r], codes of key j) for every row r and key j < n of the span k (keys pos .. pos +
// n - 1 of the tile), advancing next's K prefetch.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/attention_tile_impl.h"

namespace ferrum_kv::kernels {

template <class Isa, DType kDType, template <class> class Scorer>
class QuantFastTile {
  static_assert(kDType == DType::kInt8, "the fast quantized kernel covers int8");

 public:
  using Exact = TileKernel<Isa, kDType>;
  using Rows = typename Exact::Rows;
  using NextSpan = typename Exact::NextSpan;
  // Columns (codes) per vector: a chunk.
  static constexpr int kColumns = 64;
  // The second digit's unit: q_scale / kDigit.
  static constexpr int32_t kDigit = 256;

 private:
  static constexpr int kW = Isa::kWidth;
  // int16 weights per row: a span, plus the zero partner of an odd span's last key.
  static constexpr int kWeightStride = kSpanTokens + 2;
  static constexpr float kQueryLevels = 127.0f;
  static constexpr float kWeightLevels = 32767.0f;
  static constexpr int64_t kParamBytes = 2 * sizeof(float);  // (scale, offset) per row

 public:
  static void Run(const AttentionTile& t) {
    if (t.num_rows >= kW) return Exact::Run(t);
    RunNarrow(t);
  }

 private:
  static int Padded(int d) { return (d + kColumns - 1) / kColumns * kColumns; }

  static void RunNarrow(const AttentionTile& t) {
    const int d = t.head_dim;
    const int dp = Padded(d);
    const int rows = t.num_rows;
    // Row r's digits hi and lo at q8[(2 r) dp] and q8[(2 r + 1) dp]; acc[r dp ...] in the order
    // of Position.
    std::vector<int8_t> q8(size_t(2 * rows) * dp, 0);
    std::vector<float> acc(size_t(rows) * dp, 0.0f);
    float q_scale[kMaxTileRows], q_sum[kMaxTileRows];
    for (int r = 0; r < rows; ++r) {
      QuantizeQuery(t.q + int64_t{r} * d, d, q8.data() + size_t(2 * r) * dp, dp, q_scale[r],
                    q_sum[r]);
      t.max[r] = -std::numeric_limits<float>::infinity();
      t.sum[r] = 0.0f;
    }
    alignas(64) float scores[kMaxTileRows * kSpanTokens] = {};
    alignas(64) int16_t weights[kMaxTileRows * kWeightStride];
    float weight_scale[kMaxTileRows], value_offset[kMaxTileRows];
    Scorer<QuantFastTile> scorer(t, q8.data(), dp);
    Exact::template ForEachSpan<true>(t, Exact::NarrowSpanKeys(d), [&](int32_t pos, int n,
                                                                      const Rows& k, const Rows& v,
                                                                      NextSpan& next) {
      if (pos + n < t.key_end) PrefetchParams(t, pos + n);
      alignas(64) float k_scale[kSpanTokens], k_offset[kSpanTokens];
      alignas(64) float v_scale[kSpanTokens], v_offset[kSpanTokens];
      SplitParams(k, n, k_scale, k_offset);
      SplitParams(v, n, v_scale, v_offset);
      scorer.Score(pos, n, k, scores, next);
      for (int r = 0; r < rows; ++r) {
        FoldScores(scores + r * kSpanTokens, n, k_scale, k_offset, q_scale[r], q_sum[r]);
      }
      Exact::SoftmaxRows(t, pos, n, scores, acc.data(), dp);
      for (int r = 0; r < rows; ++r) {
        QuantizeWeights(scores + r * kSpanTokens, n, v_scale, v_offset,
                        weights + r * kWeightStride, weight_scale[r], value_offset[r]);
      }
      Exact::ForRowGroups(rows, [&](auto nr, int r0) {
        AccumulateRows<decltype(nr)::value>(weights + r0 * kWeightStride, weight_scale + r0,
                                            value_offset + r0, v, n, d, dp,
                                            acc.data() + size_t(r0) * dp, next);
      });
    });
    for (int r = 0; r < rows; ++r) {
      const float* from = acc.data() + size_t(r) * dp;
      float* to = t.acc + int64_t{r} * d;
      for (int c = 0; c < d; ++c) to[c] = from[Position(c)];
    }
  }

  // Where column c of a row is in acc: AccumulateRows' vector i of a chunk holds in lane
  // 4 L + m the column 16 L + 4 i + m of the chunk (in-lane byte unpacks).
  static int Position(int c) {
    const int o = c % kColumns;
    return c - o + 16 * ((o / 4) % 4) + 4 * (o / 16) + o % 4;
  }

  // The digits of q (d each, zeros in the padding): hi at digits, lo at digits + dp. q_scale is
  // the unit of the combined digit 256 hi + lo (absmax(q) / 127 / 256), q_sum the sum of
  // q~ = q_scale (256 hi + lo).
  static void QuantizeQuery(const float* q, int d, int8_t* digits, int dp, float& q_scale,
                            float& q_sum) {
    float absmax = 0.0f;
    for (int c = 0; c < d; ++c) absmax = std::max(absmax, std::fabs(q[c]));
    const float unit = absmax / kQueryLevels;
    int32_t total = 0;
    if (unit > 0.0f) {
      for (int c = 0; c < d; ++c) {
        const float hi = std::clamp(std::nearbyint(q[c] / unit), -kQueryLevels, kQueryLevels);
        const float rest = std::fma(-hi, unit, q[c]);  // exact
        const float lo = std::clamp(std::nearbyint(rest / unit * float(kDigit)), -kQueryLevels,
                                    kQueryLevels);
        digits[c] = static_cast<int8_t>(hi);
        digits[dp + c] = static_cast<int8_t>(lo);
        total += int32_t{digits[c]} * kDigit + digits[dp + c];
      }
    }
    q_scale = unit / float(kDigit);
    q_sum = q_scale * static_cast<float>(total);
  }

  // The K and V row parameters of the span from pos (NextSpan prefetches only the codes; a
  // span's parameters are in other lines of the block, and their misses measured 11 % of this
  // kernel's samples without this).
  static void PrefetchParams(const AttentionTile& t, int32_t pos) {
    const int32_t offset = pos % t.block_size;
    const int n = std::min({t.block_size - offset, t.key_end - pos, int{kSpanTokens}});
    const int64_t begin = int64_t{t.block_table[pos / t.block_size]} * t.block_bytes +
                          t.params_offset + int64_t{offset} * kParamBytes;
    for (int64_t line = 0; line < int64_t{n} * kParamBytes; line += 64) {
      __builtin_prefetch(t.k_base + begin + line, 0, 2);
      __builtin_prefetch(t.v_base + begin + line, 0, 2);
    }
  }

 public:
  static __mmask64 ByteMask(int n) {
    return n >= 64 ? ~__mmask64{0} : static_cast<__mmask64>((uint64_t{1} << n) - 1);
  }
  // Codes c .. c + 63 of a row of d (those past d read as 0).
  static __m512i LoadCodes(const uint8_t* row, int c, int d) {
    if (c + kColumns <= d) return _mm512_loadu_si512(row + c);
    return _mm512_maskz_loadu_epi8(ByteMask(d - c), row + c);
  }

 private:
  // (scale, offset) of rows 0 .. n - 1 into two arrays of kSpanTokens (lanes past n 0).
  static void SplitParams(const Rows& x, int n, float* scale, float* offset) {
    const __m512i even =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for (int j = 0; j < n; j += kW) {
      const int m = std::min(kW, n - j);
      const float* p = x.Params(j);
      const __m512 lo = _mm512_maskz_loadu_ps(Isa::Mask(std::min(kW, 2 * m)), p);
      const __m512 hi = _mm512_maskz_loadu_ps(Isa::Mask(std::max(0, 2 * m - kW)), p + kW);
      _mm512_store_ps(scale + j, _mm512_permutex2var_ps(lo, even, hi));
      _mm512_store_ps(offset + j, _mm512_permutex2var_ps(lo, odd, hi));
    }
  }

  // s[j] = k_scale[j] * q_scale * s[j] + k_offset[j] * q_sum for j < n (whole vectors).
  static void FoldScores(float* s, int n, const float* k_scale, const float* k_offset,
                         float q_scale, float q_sum) {
    const __m512 scale = _mm512_set1_ps(q_scale);
    const __m512 sum = _mm512_set1_ps(q_sum);
    for (int j = 0; j < n; j += kW) {
      const __m512 offset_term = _mm512_mul_ps(_mm512_load_ps(k_offset + j), sum);
      const __m512 factor = _mm512_mul_ps(_mm512_load_ps(k_scale + j), scale);
      _mm512_store_ps(s + j, _mm512_fmadd_ps(_mm512_load_ps(s + j), factor, offset_term));
    }
  }

  // One row's softmax weights p[0, n) to int16 w16[0, n) (and w16[n] = 0) of p * v_scale, with
  // w_scale the float each unit is worth; offset_sum = sum of p * v_offset.
  static void QuantizeWeights(const float* p, int n, const float* v_scale, const float* v_offset,
                              int16_t* w16, float& w_scale, float& offset_sum) {
    alignas(64) float w[kSpanTokens];
    __m512 largest = _mm512_setzero_ps();
    __m512 offsets = _mm512_setzero_ps();
    for (int j = 0; j < n; j += kW) {
      const __m512 pj = _mm512_maskz_loadu_ps(Isa::Mask(std::min(kW, n - j)), p + j);
      const __m512 wj = _mm512_mul_ps(pj, _mm512_load_ps(v_scale + j));
      _mm512_store_ps(w + j, wj);
      largest = _mm512_max_ps(largest, wj);
      offsets = _mm512_fmadd_ps(pj, _mm512_load_ps(v_offset + j), offsets);
    }
    offset_sum = _mm512_reduce_add_ps(offsets);
    const float max_weight = _mm512_reduce_max_ps(largest);
    w_scale = max_weight / kWeightLevels;
    const __m512 to_units = _mm512_set1_ps(max_weight > 0.0f ? kWeightLevels / max_weight : 0.0f);
    for (int j = 0; j < n; j += kW) {
      // vcvtps2dq rounds to nearest even (the default rounding mode).
      const __m512i units = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(w + j), to_units));
      _mm512_mask_cvtepi32_storeu_epi16(w16 + j, Isa::Mask(std::min(kW, n - j)), units);
    }
    w16[n] = 0;
  }

  // acc[r] += w_scale[r] * sum over j < n of w16[r][j] * codes of value j, plus offset_sum[r]
  // in every column, r < NR (acc in the order of Position). Advances next's V prefetch with the
  // columns.
  template <int NR>
  static void AccumulateRows(const int16_t* w16, const float* w_scale, const float* offset_sum,
                             const Rows& v, int n, int d, int dp, float* acc, NextSpan& next) {
    const __m512i zero = _mm512_setzero_si512();
    for (int c = 0; c < d; c += kColumns) {
      __m512i a[NR][4];
      for (int r = 0; r < NR; ++r)
        for (int i = 0; i < 4; ++i) a[r][i] = _mm512_setzero_si512();
      for (int j = 0; j < n; j += 2) {
        const __m512i x = LoadCodes(v.Row(j), c, d);
        // An odd span's last key pairs with itself at weight w16[n] = 0.
        const __m512i y = j + 1 < n ? LoadCodes(v.Row(j + 1), c, d) : x;
        const __m512i low = _mm512_unpacklo_epi8(x, y);
        const __m512i high = _mm512_unpackhi_epi8(x, y);
        // Lane 4 L + m of pairs[i]: (code of key j, code of key j + 1) of column 16 L + 4 i + m,
        // as two int16.
        const __m512i pairs[4] = {_mm512_unpacklo_epi8(low, zero), _mm512_unpackhi_epi8(low, zero),
                                  _mm512_unpacklo_epi8(high, zero),
                                  _mm512_unpackhi_epi8(high, zero)};
        for (int r = 0; r < NR; ++r) {
          int32_t both;
          std::memcpy(&both, w16 + r * kWeightStride + j, sizeof both);
          const __m512i weight = _mm512_set1_epi32(both);
          for (int i = 0; i < 4; ++i) a[r][i] = _mm512_dpwssd_epi32(a[r][i], pairs[i], weight);
        }
      }
      for (int r = 0; r < NR; ++r) {
        const __m512 scale = _mm512_set1_ps(w_scale[r]);
        const __m512 offset = _mm512_set1_ps(offset_sum[r]);
        for (int i = 0; i < 4; ++i) {
          float* out = acc + r * dp + c + i * kW;
          _mm512_storeu_ps(out, _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[r][i]), scale,
                                                _mm512_add_ps(_mm512_loadu_ps(out), offset)));
        }
      }
      next.ValuesUntil(c + kColumns, d);
    }
  }
};

}  // namespace ferrum_kv::kernels
