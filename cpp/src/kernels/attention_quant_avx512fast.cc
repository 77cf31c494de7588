// The "fast" precision's tile kernel over int8 K/V (attention.h, kv_format.h) for AVX-512 CPUs
// with AVX512-VNNI (compiled with those flags; attention.cc calls it only after checking them at
// run time). Integer dot products on the stored codes, never a float copy of them.
//
// What it computes, for the narrow tiles of decode (fewer rows than 16; wider tiles, i.e. prefill,
// run the exact kernel TileKernel<Avx512, dtype>, see BENCHMARKS.md): the same online-softmax
// state as the exact kernel (attention_tile.h), with
//   Q.K  each query row q (already times the softmax scale) is quantized once per tile to two
//        int8 digits, symmetric: q_scale = absmax(q) / 127, hi = round-to-nearest-even(q /
//        q_scale) in [-127, 127], lo = the same of (q - q_scale hi) / (q_scale / 256), clamped
//        to [-127, 127]; q~ = q_scale (hi + lo / 256) is within q_scale / 512 of q. (One digit,
//        the int8 query, measured 1.2-2.6e-2 relative error on the attention tests'
//        grids, whose keys have outlier channels and whose softmax is peaked: over the 1.5e-2
//        bound. The second digit costs one more vpdpbusd per 64 columns and row.) With a key
//        row's codes c (u8) and (scale, offset), x_hat = offset + scale c (kv_format.h), the
//        score is q~ . x_hat, computed as
//          scale * (q_scale / 256) * (256 dot(c, hi) + dot(c, lo)) + offset * sum(q~)
//        where each dot is exact in int32 (vpdpbusd: u8 codes times s8 digits, 4 products per
//        lane; |dot| <= 255 * 127 * head_dim, summed in float32 exactly up to head_dim 518
//        and rounded once beyond). The offset term uses q~'s sum, not q's: the
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
// are in the unpack order of the codes (InColumnOrder below) and copied back in order at the end.
// Thread safety: reentrant (state on the stack and in the tile's own outputs).
// Complexity: per key and query row, 2 head_dim / 64 vpdpbusd for Q.K; per key pair and query
// row head_dim / 16 vpdpwssd for P.V.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>

// As in attention_avx512.cc: GCC 12's intrinsic headers trip these on purpose-undefined operands.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "kernels/attention_isa_avx512.h"
#include "kernels/attention_tile_impl.h"

namespace ferrum_kv::kernels {

template <class Isa, DType kDType>
class QuantFastTile {
  static_assert(kDType == DType::kInt8, "the fast quantized kernel covers int8");
  using Exact = TileKernel<Isa, kDType>;
  using Rows = typename Exact::Rows;
  using NextSpan = typename Exact::NextSpan;
  static constexpr int kW = Isa::kWidth;
  // Columns (codes) per vector: a chunk.
  static constexpr int kColumns = 64;
  // Keys scored together (2 digits x 4 rows x 2 keys = 16 accumulators).
  static constexpr int kScoreKeys = 2;
  // The second digit's unit: q_scale / kDigit.
  static constexpr int32_t kDigit = 256;
  // int16 weights per row: a span, plus the zero partner of an odd span's last key.
  static constexpr int kWeightStride = kSpanTokens + 2;
  static constexpr float kQueryLevels = 127.0f;
  static constexpr float kWeightLevels = 32767.0f;

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
    // of InColumnOrder.
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
    Exact::template ForEachSpan<true>(t, Exact::NarrowSpanKeys(d), [&](int32_t pos, int n,
                                                                      const Rows& k, const Rows& v,
                                                                      NextSpan& next) {
      Exact::PrefetchParams(next);
      alignas(64) float k_scale[kSpanTokens], k_offset[kSpanTokens];
      alignas(64) float v_scale[kSpanTokens], v_offset[kSpanTokens];
      SplitParams(k, n, k_scale, k_offset);
      SplitParams(v, n, v_scale, v_offset);
      Exact::ForRowGroups(rows, [&](auto nr, int r0) {
        ScoreRows<decltype(nr)::value>(q8.data() + size_t(2 * r0) * dp, dp, d, k, n,
                                       scores + r0 * kSpanTokens, next);
      });
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
      InColumnOrder(acc.data() + size_t(r) * dp, d, t.acc + int64_t{r} * d);
    }
  }

  // A row of acc (dp floats in the order of AccumulateRows: vector i of a chunk holds in its
  // 128-bit lane L the columns 16 L + 4 i .. 16 L + 4 i + 3 of the chunk, from in-lane byte
  // unpacks) into its d columns in order: per chunk, a 4 x 4 transpose of 128-bit lanes.
  static void InColumnOrder(const float* from, int d, float* to) {
    for (int c = 0; c < d; c += kColumns) {
      __m512 v[4];
      for (int i = 0; i < 4; ++i) v[i] = _mm512_loadu_ps(from + c + i * kW);
      const __m512 low01 = _mm512_shuffle_f32x4(v[0], v[1], 0x44);   // lanes 0, 1 of each
      const __m512 low23 = _mm512_shuffle_f32x4(v[2], v[3], 0x44);
      const __m512 high01 = _mm512_shuffle_f32x4(v[0], v[1], 0xEE);  // lanes 2, 3 of each
      const __m512 high23 = _mm512_shuffle_f32x4(v[2], v[3], 0xEE);
      const __m512 out[4] = {_mm512_shuffle_f32x4(low01, low23, 0x88),
                             _mm512_shuffle_f32x4(low01, low23, 0xDD),
                             _mm512_shuffle_f32x4(high01, high23, 0x88),
                             _mm512_shuffle_f32x4(high01, high23, 0xDD)};
      for (int L = 0; L < 4 && c + L * kW < d; ++L) {
        _mm512_mask_storeu_ps(to + c + L * kW, Isa::Mask(std::min(kW, d - c - L * kW)), out[L]);
      }
    }
  }

  // The digits of q (d each, zeros in the padding): hi at digits, lo at digits + dp. q_scale is
  // the unit of the combined digit 256 hi + lo (absmax(q) / 127 / 256), q_sum the sum of
  // q~ = q_scale (256 hi + lo).
  static void QuantizeQuery(const float* q, int d, int8_t* digits, int dp, float& q_scale,
                            float& q_sum) {
    // Vectors of 16 columns (the lanes past d load as 0 and give digits 0), computed as the
    // scalar definition above: division, round to nearest even, fma, clamp.
    __m512 largest = _mm512_setzero_ps();
    for (int c = 0; c < d; c += kW) {
      largest = _mm512_max_ps(largest, _mm512_abs_ps(Isa::LoadPartial(q + c, std::min(kW, d - c))));
    }
    const float unit = _mm512_reduce_max_ps(largest) / kQueryLevels;
    __m512i total = _mm512_setzero_si512();
    if (unit > 0.0f) {
      const __m512 units = _mm512_set1_ps(unit);
      for (int c = 0; c < d; c += kW) {
        const __m512 x = Isa::LoadPartial(q + c, std::min(kW, d - c));
        const __m512 hi = ClampedRound(_mm512_div_ps(x, units));
        const __m512 rest = _mm512_fnmadd_ps(hi, units, x);  // exact
        const __m512 lo = ClampedRound(
            _mm512_mul_ps(_mm512_div_ps(rest, units), _mm512_set1_ps(float(kDigit))));
        const __m512i hi_int = _mm512_cvtps_epi32(hi), lo_int = _mm512_cvtps_epi32(lo);
        const __mmask16 columns = Isa::Mask(std::min(kW, d - c));
        _mm512_mask_cvtepi32_storeu_epi8(digits + c, columns, hi_int);
        _mm512_mask_cvtepi32_storeu_epi8(digits + dp + c, columns, lo_int);
        total = _mm512_add_epi32(
            total, _mm512_add_epi32(_mm512_mullo_epi32(hi_int, _mm512_set1_epi32(kDigit)), lo_int));
      }
    }
    q_scale = unit / float(kDigit);
    q_sum = q_scale * static_cast<float>(_mm512_reduce_add_epi32(total));
  }
  // round-to-nearest-even(x) clamped to [-127, 127].
  static __m512 ClampedRound(__m512 x) {
    const __m512 rounded = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_min_ps(_mm512_max_ps(rounded, _mm512_set1_ps(-kQueryLevels)),
                         _mm512_set1_ps(kQueryLevels));
  }

  static __mmask64 ByteMask(int n) {
    return n >= 64 ? ~__mmask64{0} : static_cast<__mmask64>((uint64_t{1} << n) - 1);
  }
  // Codes c .. c + 63 of a row of d (those past d read as 0).
  static __m512i LoadCodes(const uint8_t* row, int c, int d) {
    if (c + kColumns <= d) return _mm512_loadu_si512(row + c);
    return _mm512_maskz_loadu_epi8(ByteMask(d - c), row + c);
  }

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

  // scores[r * kSpanTokens + j] = 256 dot(hi[r], codes of key j) + dot(lo[r], codes of key j)
  // (q8: rows' digits, 2 dp apart, as QuantizeQuery writes them).
  template <int NR>
  static void ScoreRows(const int8_t* q8, int dp, int d, const Rows& k, int n, float* scores,
                        NextSpan& next) {
    Exact::template ForKeyGroups<kScoreKeys>(n, next, [&](auto nk, int j) {
      ScoreKeys<NR, decltype(nk)::value>(q8, dp, d, k.From(j), scores + j);
    });
  }

  template <int NR, int NK>
  static void ScoreKeys(const int8_t* q8, int dp, int d, const Rows& k, float* scores) {
    __m512i acc[NR][NK][2];
    for (int r = 0; r < NR; ++r)
      for (int j = 0; j < NK; ++j) acc[r][j][0] = acc[r][j][1] = _mm512_setzero_si512();
    for (int c = 0; c < d; c += kColumns) {
      __m512i key[NK];
      for (int j = 0; j < NK; ++j) key[j] = LoadCodes(k.Row(j), c, d);
      for (int r = 0; r < NR; ++r) {
        for (int digit = 0; digit < 2; ++digit) {
          const __m512i query = _mm512_loadu_si512(q8 + (2 * r + digit) * dp + c);
          for (int j = 0; j < NK; ++j) {
            acc[r][j][digit] = _mm512_dpbusd_epi32(acc[r][j][digit], key[j], query);
          }
        }
      }
    }
    // Lanes are integers below 2^24 (exact in float32); 256 hi + lo is rounded once.
    __m512 sums[NR][NK];
    for (int r = 0; r < NR; ++r) {
      for (int j = 0; j < NK; ++j) {
        sums[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][j][0]),
                                     _mm512_set1_ps(float(kDigit)),
                                     _mm512_cvtepi32_ps(acc[r][j][1]));
      }
    }
    Exact::template StoreScores<NR, NK>(sums, scores);
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
  // in every column, r < NR (acc in the order of InColumnOrder). Advances next's V prefetch with
  // the columns.
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

void AttentionTileAvx512QuantFast(const AttentionTile& tile) {
  switch (tile.dtype) {
    case DType::kInt8: return QuantFastTile<Avx512, DType::kInt8>::Run(tile);
    default: return AttentionTileAvx512(tile);  // no fast kernel: the exact one
  }
}

}  // namespace ferrum_kv::kernels
