// The "fast" precision's tile kernel over FP8 K/V (fp8_e4m3, fp8_e5m2; kv_format.h) for AVX-512
// CPUs with AVX512-FP16 (compiled with those flags; attention.cc calls it only after checking
// them at run time): float16 arithmetic, 32 lanes per instruction where the exact kernel does 16
// in float32, on the codes widened to float16 in registers as the exact kernel widens them
// (E5M2: a code is a float16's upper byte; E4M3: sign extension, shift and mask give a float16 of
// its value times 2^-8, subnormals included; attention_isa_avx512.h), never a copy of a block.
//
// What it computes, for the narrow tiles of decode (fewer than 16 rows; wider tiles, i.e.
// prefill, run the exact kernel TileKernel<Avx512, dtype>): the exact kernel's online-softmax
// state (attention_tile.h), with L the largest load (448 / 256 for E4M3, 57344 for E5M2) and
// x_hat = (scale / kUnit) * load (attention_kv_load.h):
//   Q.K  each query row is multiplied by a power of two 2^e and rounded to float16 once per tile,
//        e such that ceil(d / 32) |q 2^e|max L <= 2^14 (within 4x of the largest such e): every
//        float16 lane then sums at most ceil(d / 32) products (vfmadd231ph) below 2^14, far from
//        float16's 65504. Lane pairs are added in float16 (below 2^15), widened to float32 and
//        summed there; the score is that sum times (key scale / kUnit), then times 2^-e
//        (vscalefps: no overflowing power of two for huge queries).
//   P.V  per row and span (at most 64 keys, one block at most), the weights w_j = p_j scale_j /
//        kUnit are multiplied by a power of two 2^f, n |w 2^f|max L <= 2^14, rounded to float16
//        and summed into float16 partial sums (vfmadd231ph, one per 32 columns, row and key) of
//        at most kFlushKeys keys, which are widened and added, times 2^-f, to the float32 acc.
// Error: float16 rounding (2^-11 relative) of q, of the weights and of partial sums of ceil(d /
// 32) products (scores) or of at most kFlushKeys keys (values: a term below half an ulp of its
// partial sum is lost, so a span whose first key dominates loses at most (kFlushKeys - 1) 2^-12,
// 0.4 %, of the others' share); test_attention_quantized_fast.py states the figures measured
// against a float64 reference on the dequantized values, on its grids and on such spans.
// Inputs: what the exact kernel takes (finite q, finite parameters), and codes the quantizer
// writes (finite: E5M2's infinity and NaN codes never occur). Keys that no row of the tile sees
// in a span are not read for P.V.
// Thread safety: reentrant (state on the stack and in the tile's own outputs).
// Complexity: per key and query row, ceil(d / 32) vfmadd231ph for Q.K and as many for P.V.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

// As in attention_avx512.cc: GCC 12's intrinsic headers trip these on purpose-undefined operands.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "kernels/attention_isa_avx512.h"
#include "kernels/attention_tile_impl.h"

namespace ferrum_kv::kernels {

template <class Isa, DType kDType>
class Fp8HalfTile {
  using Exact = TileKernel<Isa, kDType>;
  using Load = typename Exact::Load;
  using Rows = typename Exact::Rows;
  using NextSpan = typename Exact::NextSpan;
  static_assert(Load::kFp8, "the float16 kernel covers the FP8 formats");
  static constexpr int kW = Isa::kWidth;  // float32 lanes
  static constexpr int kHalves = 32;      // float16 lanes
  static constexpr int kScoreKeys = 4;
  static constexpr bool kE4M3 = Load::kE4M3;
  // The largest float16 a code widens to, and the bound kept on every float16 partial sum.
  static constexpr float kLargestLoad = (kE4M3 ? 448.0f : 57344.0f) * Load::kUnit;
  static constexpr float kSumBound = 16384.0f;
  // Keys summed in float16 before their sums are added to the float32 acc.
  static constexpr int kFlushKeys = 16;

 public:
  static void Run(const AttentionTile& t) {
    if (t.num_rows >= kW) return Exact::Run(t);
    RunNarrow(t);
  }

 private:
  static int Padded(int d) { return (d + kHalves - 1) / kHalves * kHalves; }

  static void RunNarrow(const AttentionTile& t) {
    const int d = t.head_dim;
    const int dp = Padded(d);
    const int rows = t.num_rows;
    // Row r's query (float16 bits) at q16[r dp], its acc at acc[r dp] (columns in order).
    std::vector<uint16_t> q16(size_t(rows) * dp, 0);
    std::vector<float> acc(size_t(rows) * dp, 0.0f);
    int q_exponent[kMaxTileRows];
    for (int r = 0; r < rows; ++r) {
      q_exponent[r] =
          QueryToHalf(t.q + int64_t{r} * d, d, dp / kHalves, q16.data() + size_t(r) * dp);
      t.max[r] = -std::numeric_limits<float>::infinity();
      t.sum[r] = 0.0f;
    }
    alignas(64) float scores[kMaxTileRows * kSpanTokens] = {};
    alignas(64) uint32_t weights[kMaxTileRows * kSpanTokens];
    int weight_exponent[kMaxTileRows];
    Exact::template ForEachSpan<true>(t, Exact::NarrowSpanKeys(d), [&](int32_t pos, int n,
                                                                      const Rows& k, const Rows& v,
                                                                      NextSpan& next) {
      Exact::PrefetchParams(next);
      Exact::ForRowGroups(rows, [&](auto nr, int r0) {
        ScoreRows<decltype(nr)::value>(q16.data() + size_t(r0) * dp, dp, d, k, n,
                                       scores + r0 * kSpanTokens, next);
      });
      for (int r = 0; r < rows; ++r) {
        FoldScores(scores + r * kSpanTokens, n, k.Params(0), q_exponent[r]);
      }
      Exact::SoftmaxRows(t, pos, n, scores, acc.data(), dp);
      for (int r = 0; r < rows; ++r) {
        weight_exponent[r] = WeightsToHalf(scores + r * kSpanTokens, n, v.Params(0),
                                           weights + r * kSpanTokens);
      }
      const auto [lo, hi] = SeenKeys(t, pos, n);
      Exact::ForRowGroups(rows, [&](auto nr, int r0) {
        AccumulateRows<decltype(nr)::value>(weights + r0 * kSpanTokens + lo, weight_exponent + r0,
                                            v.From(lo), hi - lo, d, dp,
                                            acc.data() + size_t(r0) * dp, next);
      });
    });
    for (int r = 0; r < rows; ++r) {
      std::copy_n(acc.data() + size_t(r) * dp, d, t.acc + int64_t{r} * d);
    }
  }

  // The keys [lo, hi) of the span (keys pos .. pos + n - 1) that at least one row sees.
  static std::pair<int, int> SeenKeys(const AttentionTile& t, int32_t pos, int n) {
    int lo = n, hi = 0;
    for (int r = 0; r < t.num_rows; ++r) {
      const auto [row_lo, row_hi] = Exact::VisibleKeys(t, r, pos, n);
      if (row_lo >= row_hi) continue;
      lo = std::min(lo, row_lo);
      hi = std::max(hi, row_hi);
    }
    return {lo, std::max(lo, hi)};
  }

  // 2^e for the largest e with x 2^e < 2^ilogb(bound) (x > 0 and bound > 0 finite): within 4x
  // of the largest power of two keeping x 2^e <= bound. Returned as e.
  static int PowerBelow(float bound, float x) { return std::ilogb(bound) - std::ilogb(x) - 1; }

  // q (d floats) times 2^e rounded to float16 at out (dp elements, zeros past d), e as in the
  // header for sums of lanes_per_sum products; returns e (0 for an all-zero q, whose scores are
  // 0 whatever e).
  static int QueryToHalf(const float* q, int d, int lanes_per_sum, uint16_t* out) {
    __m512 largest = _mm512_setzero_ps();
    for (int c = 0; c < d; c += kW) {
      largest = _mm512_max_ps(largest, _mm512_abs_ps(Isa::LoadPartial(q + c, std::min(kW, d - c))));
    }
    const float absmax = _mm512_reduce_max_ps(largest);
    if (!(absmax > 0.0f)) return 0;
    const int e = PowerBelow(kSumBound / (float(lanes_per_sum) * kLargestLoad), absmax);
    const __m512 exponent = _mm512_set1_ps(float(e));
    for (int c = 0; c < d; c += kW) {  // dp is a multiple of kW: whole stores stay inside
      const __m512 x = Isa::LoadPartial(q + c, std::min(kW, d - c));
      const __m256i half = _mm512_cvtps_ph(_mm512_scalef_ps(x, exponent),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c), half);
    }
    return e;
  }

  // Codes c .. c + 31 of a row of d (those past d read as 0) widened to float16.
  static __m512h LoadHalves(const uint8_t* row, int c, int d) {
    const int n = std::min(kHalves, d - c);
    const __m256i bytes =
        n == kHalves ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c))
                     : _mm256_maskz_loadu_epi8(static_cast<__mmask32>((uint64_t{1} << n) - 1),
                                               row + c);
    if constexpr (kE4M3) {
      const __m512i x = _mm512_slli_epi16(_mm512_cvtepi8_epi16(bytes), 7);
      return _mm512_castsi512_ph(_mm512_and_si512(x, _mm512_set1_epi16(~0x4000)));
    } else {
      return _mm512_castsi512_ph(_mm512_slli_epi16(_mm512_cvtepu8_epi16(bytes), 8));
    }
  }

  // x[0] and x[1] (32 float16 lanes each) folded to 16 lanes of float32 each with the same sum:
  // one float16 addition of their 256-bit halves for both (a sum of two lanes stays below 2^15),
  // then widened.
  static void FoldPairToFloat(const __m512h* x, __m512* out) {
    const __m512 a = _mm512_castph_ps(x[0]), b = _mm512_castph_ps(x[1]);
    const __m512h halves = _mm512_add_ph(_mm512_castps_ph(_mm512_shuffle_f32x4(a, b, 0x44)),
                                         _mm512_castps_ph(_mm512_shuffle_f32x4(a, b, 0xEE)));
    const __m512i bits = _mm512_castph_si512(halves);
    out[0] = _mm512_cvtph_ps(_mm512_castsi512_si256(bits));
    out[1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(bits, 1));
  }

  // scores[r * kSpanTokens + j] = q16[r] . loads of key j, in float16 lanes summed in float32.
  template <int NR>
  static void ScoreRows(const uint16_t* q16, int dp, int d, const Rows& k, int n, float* scores,
                        NextSpan& next) {
    Exact::template ForKeyGroups<kScoreKeys>(n, next, [&](auto nk, int j) {
      ScoreKeys<NR, decltype(nk)::value>(q16, dp, d, k.From(j), scores + j);
    });
  }

  template <int NR, int NK>
  static void ScoreKeys(const uint16_t* q16, int dp, int d, const Rows& k, float* scores) {
    __m512h acc[NR][NK];
    for (int r = 0; r < NR; ++r)
      for (int j = 0; j < NK; ++j) acc[r][j] = _mm512_setzero_ph();
    for (int c = 0; c < d; c += kHalves) {
      __m512h key[NK];
      for (int j = 0; j < NK; ++j) key[j] = LoadHalves(k.Row(j), c, d);
      for (int r = 0; r < NR; ++r) {
        const __m512h query = _mm512_loadu_ph(q16 + r * dp + c);
        for (int j = 0; j < NK; ++j) acc[r][j] = _mm512_fmadd_ph(query, key[j], acc[r][j]);
      }
    }
    __m512 sums[NR][NK];
    for (int i = 0; i + 1 < NR * NK; i += 2) FoldPairToFloat(&acc[0][0] + i, &sums[0][0] + i);
    if constexpr (NR * NK % 2 == 1) {
      const __m512h last[2] = {acc[NR - 1][NK - 1], _mm512_setzero_ph()};
      __m512 folded[2];
      FoldPairToFloat(last, folded);
      sums[NR - 1][NK - 1] = folded[0];
    }
    Exact::template StoreScores<NR, NK>(sums, scores);
  }

  // s[j] = s[j] (scale_j / kUnit) 2^-q_exponent for j < n (fp8 rows have one parameter, the
  // scale: the span's scales are consecutive floats).
  static void FoldScores(float* s, int n, const float* k_scale, int q_exponent) {
    const __m512 inverse_unit = _mm512_set1_ps(1.0f / Load::kUnit);
    const __m512 exponent = _mm512_set1_ps(float(-q_exponent));
    for (int j = 0; j < n; j += kW) {
      const __m512 scale = _mm512_maskz_loadu_ps(Isa::Mask(std::min(kW, n - j)), k_scale + j);
      const __m512 folded =
          _mm512_mul_ps(_mm512_load_ps(s + j), _mm512_mul_ps(scale, inverse_unit));
      _mm512_store_ps(s + j, _mm512_scalef_ps(folded, exponent));
    }
  }

  // One row's weights p[0, n) times v_scale_j / kUnit, times 2^f as in the header, to float16
  // w16[0, n), each twice in its 32 bits (a 32-bit broadcast is a plain load, a 16-bit one also
  // takes the shuffle port); returns f (0 when every weight is 0).
  static int WeightsToHalf(const float* p, int n, const float* v_scale, uint32_t* w16) {
    alignas(64) float w[kSpanTokens];
    const __m512 inverse_unit = _mm512_set1_ps(1.0f / Load::kUnit);
    __m512 largest = _mm512_setzero_ps();
    for (int j = 0; j < n; j += kW) {
      const __mmask16 keys = Isa::Mask(std::min(kW, n - j));
      const __m512 weighted = _mm512_mul_ps(_mm512_maskz_loadu_ps(keys, p + j),
                                            _mm512_maskz_loadu_ps(keys, v_scale + j));
      const __m512 wj = _mm512_mul_ps(weighted, inverse_unit);
      _mm512_store_ps(w + j, wj);
      largest = _mm512_max_ps(largest, wj);
    }
    const float max_weight = _mm512_reduce_max_ps(largest);
    const int f = max_weight > 0.0f ? PowerBelow(kSumBound / (float(n) * kLargestLoad), max_weight)
                                    : 0;
    const __m512 exponent = _mm512_set1_ps(float(f));
    for (int j = 0; j < n; j += kW) {
      const __m256i half = _mm512_cvtps_ph(_mm512_scalef_ps(_mm512_load_ps(w + j), exponent),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512i twice = _mm512_cvtepu16_epi32(half);
      _mm512_mask_storeu_epi32(w16 + j, Isa::Mask(std::min(kW, n - j)),
                               _mm512_or_si512(twice, _mm512_slli_epi32(twice, 16)));
    }
    return f;
  }

  // acc[r] += 2^-exponent[r] * sum over j < n of w16[r][j] * loads of value j, r < NR (w16 rows
  // kSpanTokens apart, acc rows dp apart). Advances next's V prefetch with the columns.
  template <int NR>
  static void AccumulateRows(const uint32_t* w16, const int* exponent, const Rows& v, int n,
                             int d, int dp, float* acc, NextSpan& next) {
    int c = 0;
    for (; c + 2 * kHalves <= d; c += 2 * kHalves) {
      for (int j = 0; j < n; j += kFlushKeys) {
        AccumulateColumns<NR, 2>(w16 + j, exponent, v.From(j), std::min(kFlushKeys, n - j), c,
                                 d, dp, acc);
      }
      next.ValuesUntil(c + 2 * kHalves, d);
    }
    for (; c < d; c += kHalves) {
      for (int j = 0; j < n; j += kFlushKeys) {
        AccumulateColumns<NR, 1>(w16 + j, exponent, v.From(j), std::min(kFlushKeys, n - j), c,
                                 d, dp, acc);
      }
    }
  }

  // NC vectors of 32 columns from column c (those past d read as 0 and land in acc's padding).
  template <int NR, int NC>
  [[gnu::always_inline]] static void AccumulateColumns(const uint32_t* w16, const int* exponent,
                                                       const Rows& v, int n, int c, int d, int dp,
                                                       float* acc) {
    __m512h a[NR][NC];
    for (int r = 0; r < NR; ++r)
      for (int i = 0; i < NC; ++i) a[r][i] = _mm512_setzero_ph();
    for (int j = 0; j < n; ++j) {
      __m512h value[NC];
      for (int i = 0; i < NC; ++i) value[i] = LoadHalves(v.Row(j), c + i * kHalves, d);
      for (int r = 0; r < NR; ++r) {
        const __m512h weight = _mm512_castsi512_ph(
            _mm512_set1_epi32(static_cast<int>(w16[r * kSpanTokens + j])));
        for (int i = 0; i < NC; ++i) a[r][i] = _mm512_fmadd_ph(weight, value[i], a[r][i]);
      }
    }
    for (int r = 0; r < NR; ++r) {
      const __m512 scale = _mm512_set1_ps(float(-exponent[r]));
      for (int i = 0; i < NC; ++i) {
        const __m512i bits = _mm512_castph_si512(a[r][i]);
        const __m512 low = _mm512_scalef_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(bits)), scale);
        const __m512 high =
            _mm512_scalef_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(bits, 1)), scale);
        float* out = acc + r * dp + c + i * kHalves;
        _mm512_storeu_ps(out, _mm512_add_ps(low, _mm512_loadu_ps(out)));
        _mm512_storeu_ps(out + kW, _mm512_add_ps(high, _mm512_loadu_ps(out + kW)));
      }
    }
  }
};

void AttentionTileAvx512Fp8Fast(const AttentionTile& tile) {
  switch (tile.dtype) {
    case DType::kFp8E4M3: return Fp8HalfTile<Avx512, DType::kFp8E4M3>::Run(tile);
    case DType::kFp8E5M2: return Fp8HalfTile<Avx512, DType::kFp8E5M2>::Run(tile);
    default: return AttentionTileAvx512(tile);  // no float16 kernel: the exact one
  }
}

}  // namespace ferrum_kv::kernels
