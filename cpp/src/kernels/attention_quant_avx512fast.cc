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
//        lane; |dot| <= 255 * 127 * head_dim). The offset term uses q~'s sum, not q's: the
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
// (1/65,000 of the span's largest): at most 1.1e-3 relative against a float64 reference on the
// dequantized values over the attention tests' grids (tests/python/test_attention_quantized_fast.py),
// below the 1.5e-2.
// Layout: acc is kept in a buffer of rows x RoundUp(head_dim, 64) floats whose 64-column blocks
// are in the unpack order of the codes (Position below) and copied back in order at the end.
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
  static_assert(kDType == DType::kInt8 || kDType == DType::kInt4,
                "the fast quantized kernel covers int8 and int4");
  using Exact = TileKernel<Isa, kDType>;
  using Rows = typename Exact::Rows;
  using NextSpan = typename Exact::NextSpan;
  static constexpr bool kInt4 = kDType == DType::kInt4;
  static constexpr int kW = Isa::kWidth;
  // Columns (codes) per vector: a chunk. int4: two groups of 32.
  static constexpr int kColumns = 64;
  // Keys scored together (2 digits x 4 rows x 2 keys = 16 accumulators).
  static constexpr int kScoreKeys = kInt4 ? 4 : 2;
  // The second digit's unit: q_scale / kDigit.
  static constexpr int32_t kDigit = 256;
  // int16 weights per (row, group): a span, plus the zero partner of an odd span's last key.
  static constexpr int kWeightStride = kSpanTokens + 2;
  static constexpr float kQueryLevels = 127.0f;
  static constexpr float kWeightLevels = 32767.0f;

 public:
  static void Run(const AttentionTile& t) {
    if (t.num_rows >= kW) return Exact::Run(t);
    RunNarrow(t);
  }

 private:
  // Groups of a row with their own (scale, offset): int8 one, int4 one per 32 columns, rounded
  // up to whole chunks (the extra group of an odd count has scale and weights 0).
  static int Groups(int d) {
    return kInt4 ? (d + kColumns - 1) / kColumns * 2 : 1;
  }
  static int Padded(int d) { return (d + kColumns - 1) / kColumns * kColumns; }

  // A tile's buffers. Query row r's digits hi and lo at q8[(2 r) dp] and q8[(2 r + 1) dp] (in
  // the chunk order of LoadCodes); acc[r dp ...] in the order of Position; span parameters
  // [group][key]; int16 weights [row][group][key].
  struct Buffers {
    Buffers(int rows, int d)
        : q8(size_t(2 * rows) * Padded(d), 0),
          weights(size_t(rows) * Groups(d) * kWeightStride, 0),
          floats(size_t(rows) * (Padded(d) + 2 * Groups(d)) +
                     size_t(4 * Groups(d)) * kSpanTokens,
                 0.0f) {
      const size_t span = size_t(Groups(d)) * kSpanTokens;
      acc = floats.data();
      q_group_sum = acc + size_t(rows) * Padded(d);
      value_offset = q_group_sum + size_t(rows) * Groups(d);
      k_scale = value_offset + size_t(rows) * Groups(d);
      k_offset = k_scale + span;
      v_scale = k_offset + span;
      v_offset = v_scale + span;
    }
    std::vector<int8_t> q8;
    std::vector<int16_t> weights;
    std::vector<float> floats;  // one allocation for the float arrays below
    float *acc, *q_group_sum, *value_offset, *k_scale, *k_offset, *v_scale, *v_offset;
  };

  static void RunNarrow(const AttentionTile& t) {
    const int d = t.head_dim;
    const int dp = Padded(d);
    const int groups = Groups(d);
    const int rows = t.num_rows;
    Buffers b(rows, d);
    float q_scale[kMaxTileRows];
    for (int r = 0; r < rows; ++r) {
      QuantizeQuery(t.q + int64_t{r} * d, d, b.q8.data() + size_t(2 * r) * dp, dp, q_scale[r],
                    b.q_group_sum + size_t(r) * groups);
      t.max[r] = -std::numeric_limits<float>::infinity();
      t.sum[r] = 0.0f;
    }
    alignas(64) float scores[kMaxTileRows * kSpanTokens] = {};
    float weight_scale[kMaxTileRows];
    Exact::template ForEachSpan<true>(t, Exact::NarrowSpanKeys(d), [&](int32_t pos, int n,
                                                                      const Rows& k, const Rows& v,
                                                                      NextSpan& next) {
      if (pos + n < t.key_end) PrefetchParams(t, pos + n);
      SplitParams(k, n, d, b.k_scale, b.k_offset);
      SplitParams(v, n, d, b.v_scale, b.v_offset);
      Exact::ForRowGroups(rows, [&](auto nr, int r0) {
        ScoreRows<decltype(nr)::value>(b.q8.data() + size_t(2 * r0) * dp, dp, d, k, n,
                                       scores + r0 * kSpanTokens, next);
      });
      for (int r = 0; r < rows; ++r) {
        FoldScores(scores + r * kSpanTokens, n, groups, b, q_scale[r],
                   b.q_group_sum + size_t(r) * groups);
      }
      Exact::SoftmaxRows(t, pos, n, scores, b.acc, dp);
      for (int r = 0; r < rows; ++r) {
        QuantizeWeights(scores + r * kSpanTokens, n, groups, b,
                        b.weights.data() + size_t(r) * groups * kWeightStride, weight_scale[r],
                        b.value_offset + size_t(r) * groups);
      }
      Exact::ForRowGroups(rows, [&](auto nr, int r0) {
        AccumulateRows<decltype(nr)::value>(
            b.weights.data() + size_t(r0) * groups * kWeightStride, weight_scale + r0,
            b.value_offset + size_t(r0) * groups, groups, v, n, d, dp,
            b.acc + size_t(r0) * dp, next);
      });
    });
    for (int r = 0; r < rows; ++r) {
      const float* from = b.acc + size_t(r) * dp;
      float* to = t.acc + int64_t{r} * d;
      for (int c = 0; c < d; ++c) to[c] = from[Position(c)];
    }
  }

  // The byte of LoadCodes' vector that holds column c of its chunk (c < 64): int8 in order;
  // int4 the low nibbles (even columns) in bytes 0-31, the high ones in bytes 32-63.
  static int CodeByte(int c) { return kInt4 ? (c % 2) * 32 + c / 2 : c; }
  // Where column c of a row is in acc: AccumulateRows' vector i of a chunk holds in lane
  // 4 L + m the code byte 16 L + 4 i + m (in-lane byte unpacks).
  static int Position(int c) {
    const int k = CodeByte(c % kColumns);
    return c - c % kColumns + 16 * ((k / 4) % 4) + 4 * (k / 16) + k % 4;
  }
  // The group of code byte k of chunk `chunk`.
  static int GroupOfByte(int chunk, int k) { return kInt4 ? 2 * chunk + (k / 16) % 2 : 0; }

  // The digits of q (d each, in code-byte order, zeros in the padding): hi at digits, lo at
  // digits + dp. q_scale is the unit of the combined digit 256 hi + lo (absmax(q) / 127 / 256);
  // group_sum[g] the sum of q~ = q_scale (256 hi + lo) over group g's columns.
  static void QuantizeQuery(const float* q, int d, int8_t* digits, int dp, float& q_scale,
                            float* group_sum) {
    float absmax = 0.0f;
    for (int c = 0; c < d; ++c) absmax = std::max(absmax, std::fabs(q[c]));
    const float unit = absmax / kQueryLevels;
    q_scale = unit / float(kDigit);
    if (unit == 0.0f) return;  // all digits and sums 0
    int32_t totals[2] = {0, 0};  // of the chunk's two groups
    for (int c = 0; c < d; ++c) {
      const float hi = std::clamp(std::nearbyint(q[c] / unit), -kQueryLevels, kQueryLevels);
      const float rest = std::fma(-hi, unit, q[c]);  // exact
      const float lo = std::clamp(std::nearbyint(rest / unit * float(kDigit)), -kQueryLevels,
                                  kQueryLevels);
      const int chunk = c / kColumns;
      const int at = chunk * kColumns + CodeByte(c % kColumns);
      digits[at] = static_cast<int8_t>(hi);
      digits[dp + at] = static_cast<int8_t>(lo);
      const int g = GroupOfByte(chunk, CodeByte(c % kColumns));
      totals[g % 2] += int32_t{digits[at]} * kDigit + digits[dp + at];
      if (c + 1 == d || (c + 1) % kColumns == 0) {
        for (int i = 0; i < (kInt4 ? 2 : 1); ++i) {
          group_sum[kInt4 ? 2 * chunk + i : 0] += q_scale * static_cast<float>(totals[i]);
          totals[i] = 0;
        }
      }
    }
  }

  // The K and V row parameters of the span from pos (NextSpan prefetches only the codes; a
  // span's parameters are in other lines of the block, and their misses measured 11 % of the
  // int8 kernel's samples without this).
  static void PrefetchParams(const AttentionTile& t, int32_t pos) {
    const int32_t offset = pos % t.block_size;
    const int n = std::min({t.block_size - offset, t.key_end - pos, int{kSpanTokens}});
    const int64_t row_bytes = Exact::Load::ParamsPerRow(t.head_dim) * int64_t{sizeof(float)};
    const int64_t begin = int64_t{t.block_table[pos / t.block_size]} * t.block_bytes +
                          t.params_offset + int64_t{offset} * row_bytes;
    for (int64_t line = 0; line < int64_t{n} * row_bytes; line += 64) {
      __builtin_prefetch(t.k_base + begin + line, 0, 2);
      __builtin_prefetch(t.v_base + begin + line, 0, 2);
    }
  }

  static __mmask64 ByteMask(int n) {
    return n >= 64 ? ~__mmask64{0} : static_cast<__mmask64>((uint64_t{1} << n) - 1);
  }
  // The codes of columns c .. c + 63 of a row of d (c a multiple of 64), those past d 0, as u8
  // in code-byte order (CodeByte).
  static __m512i LoadCodes(const uint8_t* row, int c, int d) {
    if constexpr (kInt4) {
      const uint8_t* bytes = row + c / 2;
      const __m256i packed = c + kColumns <= d
                                 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes))
                                 : _mm256_maskz_loadu_epi8(
                                       static_cast<__mmask32>(ByteMask((d - c + 1) / 2)), bytes);
      const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(packed),
                                              _mm256_srli_epi16(packed, 4), 1);
      return _mm512_and_si512(both, _mm512_set1_epi8(0x0f));
    } else {
      if (c + kColumns <= d) return _mm512_loadu_si512(row + c);
      return _mm512_maskz_loadu_epi8(ByteMask(d - c), row + c);
    }
  }

  // The (scale, offset) of each group of rows 0 .. n - 1 into [group][key] arrays of
  // kSpanTokens per group (keys past n 0; groups past the row's 0).
  static void SplitParams(const Rows& x, int n, int d, float* scale, float* offset) {
    if constexpr (kInt4) {
      const int real_groups = static_cast<int>((d + kInt4GroupSize - 1) / kInt4GroupSize);
      for (int j = 0; j < n; ++j) {
        const float* p = x.Params(j);
        for (int g = 0; g < real_groups; ++g) {
          scale[g * kSpanTokens + j] = p[2 * g];
          offset[g * kSpanTokens + j] = p[2 * g + 1];
        }
      }
    } else {
      const __m512i even =
          _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
      const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
      for (int j = 0; j < n; j += kW) {
        const int m = std::min(kW, n - j);
        const float* p = x.Params(j);
        const __m512 lo = _mm512_maskz_loadu_ps(Isa::Mask(std::min(kW, 2 * m)), p);
        const __m512 hi = _mm512_maskz_loadu_ps(Isa::Mask(std::max(0, 2 * m - kW)), p + kW);
        _mm512_storeu_ps(scale + j, _mm512_permutex2var_ps(lo, even, hi));
        _mm512_storeu_ps(offset + j, _mm512_permutex2var_ps(lo, odd, hi));
      }
    }
  }

  // scores[r * kSpanTokens + j] = sum over columns of (256 hi[r] + lo[r]) * code of key j, int4
  // each column's term times its group's scale (q8: rows' digits, 2 dp apart).
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
    __m512 sums[NR][NK];
    if constexpr (kInt4) {
      // Per chunk: 256 dot(hi) + dot(lo) in int32 (|.| < 2^21), then times the lanes' group
      // scales (lanes 0-3 and 8-11: the chunk's first group; 4-7, 12-15: its second).
      const __m512i select = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2);
      for (int r = 0; r < NR; ++r)
        for (int j = 0; j < NK; ++j) sums[r][j] = _mm512_setzero_ps();
      const int real_groups = static_cast<int>((d + kInt4GroupSize - 1) / kInt4GroupSize);
      for (int c = 0; c < d; c += kColumns) {
        const int group = c / int{kInt4GroupSize};
        const __mmask8 present = real_groups - group >= 2 ? 0xf : 0x3;
        __m512i key[NK];
        __m512 scale[NK];
        for (int j = 0; j < NK; ++j) {
          key[j] = LoadCodes(k.Row(j), c, d);
          const __m128 params = _mm_maskz_loadu_ps(present, k.Params(j) + 2 * group);
          scale[j] = _mm512_permutexvar_ps(select, _mm512_castps128_ps512(params));
        }
        for (int r = 0; r < NR; ++r) {
          const __m512i hi = _mm512_loadu_si512(q8 + 2 * r * dp + c);
          const __m512i lo = _mm512_loadu_si512(q8 + (2 * r + 1) * dp + c);
          for (int j = 0; j < NK; ++j) {
            __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), key[j], hi);
            dot = _mm512_dpbusd_epi32(_mm512_slli_epi32(dot, 8), key[j], lo);
            sums[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale[j], sums[r][j]);
          }
        }
      }
    } else {
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
      for (int r = 0; r < NR; ++r) {
        for (int j = 0; j < NK; ++j) {
          sums[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][j][0]),
                                       _mm512_set1_ps(float(kDigit)),
                                       _mm512_cvtepi32_ps(acc[r][j][1]));
        }
      }
    }
    Exact::template StoreScores<NR, NK>(sums, scores);
  }

  // One row's scores s[j], j < n (whole vectors), become q~ . x_hat_j: int8 q_scale * k_scale[j]
  // * s + k_offset[j] * sum(q~); int4 q_scale * s + sum over groups of k_offset[g][j] *
  // group_sum[g].
  static void FoldScores(float* s, int n, int groups, const Buffers& b, float q_scale,
                         const float* group_sum) {
    const __m512 scale = _mm512_set1_ps(q_scale);
    for (int j = 0; j < n; j += kW) {
      __m512 x = _mm512_loadu_ps(s + j);
      x = kInt4 ? _mm512_mul_ps(x, scale)
                : _mm512_mul_ps(x, _mm512_mul_ps(_mm512_loadu_ps(b.k_scale + j), scale));
      for (int g = 0; g < groups; ++g) {
        x = _mm512_fmadd_ps(_mm512_loadu_ps(b.k_offset + g * kSpanTokens + j),
                            _mm512_set1_ps(group_sum[g]), x);
      }
      _mm512_storeu_ps(s + j, x);
    }
  }

  // One row's softmax weights p[0, n) to int16 w16[g * kWeightStride + j] of p * v_scale[g][j]
  // (w16[g * kWeightStride + n] = 0), against the row's largest over the span and groups;
  // w_scale is the float each unit is worth, offset_sum[g] the sum over j of p * v_offset[g][j].
  static void QuantizeWeights(const float* p, int n, int groups, const Buffers& b, int16_t* w16,
                              float& w_scale, float* offset_sum) {
    __m512 largest = _mm512_setzero_ps();
    for (int g = 0; g < groups; ++g) {
      const float* scale = b.v_scale + g * kSpanTokens;
      for (int j = 0; j < n; j += kW) {
        const __m512 pj = _mm512_maskz_loadu_ps(Isa::Mask(std::min(kW, n - j)), p + j);
        largest = _mm512_max_ps(largest, _mm512_mul_ps(pj, _mm512_loadu_ps(scale + j)));
      }
    }
    const float max_weight = _mm512_reduce_max_ps(largest);
    w_scale = max_weight / kWeightLevels;
    const __m512 to_units = _mm512_set1_ps(max_weight > 0.0f ? kWeightLevels / max_weight : 0.0f);
    for (int g = 0; g < groups; ++g) {
      const float* scale = b.v_scale + g * kSpanTokens;
      const float* offset = b.v_offset + g * kSpanTokens;
      __m512 offsets = _mm512_setzero_ps();
      for (int j = 0; j < n; j += kW) {
        const __mmask16 mask = Isa::Mask(std::min(kW, n - j));
        const __m512 pj = _mm512_maskz_loadu_ps(mask, p + j);
        offsets = _mm512_fmadd_ps(pj, _mm512_loadu_ps(offset + j), offsets);
        // vcvtps2dq rounds to nearest even (the default rounding mode).
        const __m512 units = _mm512_mul_ps(_mm512_mul_ps(pj, _mm512_loadu_ps(scale + j)), to_units);
        _mm512_mask_cvtepi32_storeu_epi16(w16 + g * kWeightStride + j, mask,
                                          _mm512_cvtps_epi32(units));
      }
      w16[g * kWeightStride + n] = 0;
      offset_sum[g] = _mm512_reduce_add_ps(offsets);
    }
  }

  // acc[r] += w_scale[r] * sum over j < n of w16[r][g][j] * codes of value j (g each column's
  // group) + offset_sum[r][g], r < NR, in the order of Position. Advances next's V prefetch
  // with the columns.
  template <int NR>
  static void AccumulateRows(const int16_t* w16, const float* w_scale, const float* offset_sum,
                             int groups, const Rows& v, int n, int d, int dp, float* acc,
                             NextSpan& next) {
    const __m512i zero = _mm512_setzero_si512();
    // Lanes of 128-bit lanes 1 and 3: the chunk's second group (int4).
    constexpr __mmask16 kSecond = 0xf0f0;
    for (int c = 0; c < d; c += kColumns) {
      const int g = kInt4 ? 2 * (c / kColumns) : 0;
      __m512i a[NR][4];
      for (int r = 0; r < NR; ++r)
        for (int i = 0; i < 4; ++i) a[r][i] = _mm512_setzero_si512();
      for (int j = 0; j < n; j += 2) {
        const __m512i x = LoadCodes(v.Row(j), c, d);
        // An odd span's last key pairs with itself at weight w16[n] = 0.
        const __m512i y = j + 1 < n ? LoadCodes(v.Row(j + 1), c, d) : x;
        const __m512i low = _mm512_unpacklo_epi8(x, y);
        const __m512i high = _mm512_unpackhi_epi8(x, y);
        // Lane 4 L + m of pairs[i]: (code of key j, code of key j + 1) of code byte
        // 16 L + 4 i + m, as two int16.
        const __m512i pairs[4] = {_mm512_unpacklo_epi8(low, zero), _mm512_unpackhi_epi8(low, zero),
                                  _mm512_unpacklo_epi8(high, zero),
                                  _mm512_unpackhi_epi8(high, zero)};
        for (int r = 0; r < NR; ++r) {
          const int16_t* row_weights = w16 + (r * groups + g) * kWeightStride + j;
          int32_t both;
          std::memcpy(&both, row_weights, sizeof both);
          __m512i weight = _mm512_set1_epi32(both);
          if constexpr (kInt4) {
            std::memcpy(&both, row_weights + kWeightStride, sizeof both);
            weight = _mm512_mask_set1_epi32(weight, kSecond, both);
          }
          for (int i = 0; i < 4; ++i) a[r][i] = _mm512_dpwssd_epi32(a[r][i], pairs[i], weight);
        }
      }
      for (int r = 0; r < NR; ++r) {
        const __m512 scale = _mm512_set1_ps(w_scale[r]);
        __m512 offset = _mm512_set1_ps(offset_sum[r * groups + g]);
        if constexpr (kInt4) {
          offset = _mm512_mask_blend_ps(kSecond, offset,
                                        _mm512_set1_ps(offset_sum[r * groups + g + 1]));
        }
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
    case DType::kInt4: return QuantFastTile<Avx512, DType::kInt4>::Run(tile);
    default: return AttentionTileAvx512(tile);  // no fast kernel: the exact one
  }
}

}  // namespace ferrum_kv::kernels
