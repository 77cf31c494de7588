// The "fast" precision's tile kernel over int8 K/V for AVX-512 CPUs with AVX512-VNNI ("avx512"):
// attention_quant_fast_impl.h with Q.K as vpdpbusd dot products (compiled with those flags;
// attention.cc calls it only after checking them at run time).
// Complexity: per key and query row, 2 head_dim / 64 vpdpbusd and one horizontal sum.
#include <immintrin.h>

// As in attention_avx512.cc: GCC 12's intrinsic headers trip these on purpose-undefined operands.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "kernels/attention_isa_avx512.h"
#include "kernels/attention_quant_fast_impl.h"

namespace ferrum_kv::kernels {

// Q.K along head_dim: the codes of kScoreKeys keys against both digits of 4 rows at a time
// (16 accumulators), each accumulator summed horizontally at the end.
template <class Tile>
class VnniScorer {
  using Exact = typename Tile::Exact;
  using Rows = typename Tile::Rows;
  using NextSpan = typename Tile::NextSpan;
  static constexpr int kColumns = Tile::kColumns;
  static constexpr int32_t kDigit = Tile::kDigit;
  // Keys scored together (2 digits x 4 rows x 2 keys = 16 accumulators).
  static constexpr int kScoreKeys = 2;

 public:
  VnniScorer(const AttentionTile& t, const int8_t* q8, int dp)
      : q8_(q8), dp_(dp), d_(t.head_dim), rows_(t.num_rows) {}

  void Score(int32_t /*pos*/, int n, const Rows& k, float* scores, NextSpan& next) const {
    Exact::ForRowGroups(rows_, [&](auto nr, int r0) {
      ScoreRows<decltype(nr)::value>(q8_ + size_t(2 * r0) * dp_, dp_, d_, k, n,
                                     scores + r0 * kSpanTokens, next);
    });
  }

 private:
  const int8_t* q8_;
  int dp_, d_, rows_;

  // scores[r * kSpanTokens + j] = 256 dot(hi[r], codes of key j) + dot(lo[r], codes of key j)
  // (q8: rows' digits, 2 dp apart, as QuantizeQuery writes them).
  template <int NR>
  static void ScoreRows(const int8_t* q8, int dp, int d, const Rows& k, int n, float* scores,
                        NextSpan& next) {
    int j = 0;
    for (; j + kScoreKeys <= n; j += kScoreKeys) {
      ScoreKeys<NR, kScoreKeys>(q8, dp, d, k.From(j), scores + j);
      next.KeysUntil(j + kScoreKeys, n);
    }
    for (; j < n; ++j) ScoreKeys<NR, 1>(q8, dp, d, k.From(j), scores + j);
  }

  template <int NR, int NK>
  static void ScoreKeys(const int8_t* q8, int dp, int d, const Rows& k, float* scores) {
    __m512i acc[NR][NK][2];
    for (int r = 0; r < NR; ++r)
      for (int j = 0; j < NK; ++j) acc[r][j][0] = acc[r][j][1] = _mm512_setzero_si512();
    for (int c = 0; c < d; c += kColumns) {
      __m512i key[NK];
      for (int j = 0; j < NK; ++j) key[j] = Tile::LoadCodes(k.Row(j), c, d);
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

};

void AttentionTileAvx512QuantFast(const AttentionTile& tile) {
  switch (tile.dtype) {
    case DType::kInt8: return QuantFastTile<Avx512, DType::kInt8, VnniScorer>::Run(tile);
    default: return AttentionTileAvx512(tile);  // no fast kernel: the exact one
  }
}

}  // namespace ferrum_kv::kernels
