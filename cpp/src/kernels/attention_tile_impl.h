// The attention tile kernel, written once over a SIMD abstraction `Isa` and instantiated by each
// attention_<isa>.cc (compiled with that ISA's flags). Isa provides:
//   V, kWidth; Zero, Set1, Load/LoadPartial/Store/StorePartial (float), LoadHalf/LoadBf16 and
//   their Partial forms (16-bit bits widened to float), LoadBf16Pairs(p, out) (2 kWidth bfloat16
//   widened into out[0] = the even elements p[0], p[2], ..., out[1] = the odd ones), Add, Sub,
//   Mul, Fma(a, b, c) = a * b + c, Max, ReduceAdd, ReduceMax, ReduceAdd8 (out[i] =
//   ReduceAdd(x[i]), i < 8), RoundNearest, Scale2(y, n) = y * 2^n, Less(a, b) (a lane mask) and
//   Select(mask, a, b) (a where mask, else b); kBf16Dot: whether it has bfloat16 dot products
//   (the "fast" precision, attention.h), and then B (2 kWidth bfloat16), LoadBf16Raw(p) /
//   LoadBf16RawPartial(p, n) (2 kWidth bfloat16 as they are), InterleaveBf16(a, b, out) (2 kWidth
//   columns of two rows as out[0], out[1] = pairs (a[c], b[c]) in its own column order, which its
//   LoadBf16Pairs follows), ToBf16(x, n, out) (floats rounded to bfloat16, zero-padded to even
//   n), Broadcast(pair) (two bfloat16 in every 32-bit lane), Dot(acc, a, b) (acc[i] += a[2i]
//   b[2i] + a[2i+1] b[2i+1]).
// Partial forms touch only the first n < kWidth elements (loads zero the rest).
//
// Loop structure, per span of at most kSpanTokens keys inside one block:
//   1. scores. Narrow tiles (fewer rows than kWidth: decode): scores[r][j] = q[r] . k[j] for
//      groups of 4 rows x 4 keys (16 accumulators; each K vector loaded once per group, each q
//      vector once per 4 keys), then one horizontal sum each. Wide tiles (prefill): rows in
//      lanes, see RunWide; the span's K (and quantized V) are first widened (dequantized) into
//      float buffers;
//   2. online softmax (vector exp), rescaling acc when a row's max grows;
//   3. acc[r] += p[r][j] * v[j] for groups of 4 rows x 2 vectors of head_dim.
// K and V are read from memory once per tile (a decode tile with G <= 4 query heads per KV head
// touches each K/V cache line once; later row groups hit L1). The narrow path widens K and V in
// registers as it goes (each key once per group of 4 rows); quantized formats are folded there
// (attention_kv_load.h), the wide path reads the buffers' x_hat instead.
//
// bfloat16 K/V are widened 2 kWidth elements at a time into an even and an odd vector (one shift
// and one mask, instead of a zero-extension and a shift per vector), so the columns of each
// whole 2 kWidth block of head_dim are visited in the order (even ones, odd ones). The narrow
// path permutes q the same way once per tile; acc stays permuted during the tile and is put back
// in order at its end (Run). Columns past the last whole block are read in order.
//
// Fast precision with bfloat16 K/V (kFastBf16: an Isa with kBf16Dot) reads bfloat16 as it is:
// the narrow path's scores are vdpbf16ps dot products of the query rounded to bfloat16 against
// 2 kW keys' columns at a time; every path's P.V takes two keys at a time, their values
// interleaved column by column and dotted with the two weights rounded to bfloat16. The narrow
// path's q stays in column order; acc is in the interleaving's column order (PairedColumn).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/attention_kv_load.h"
#include "kernels/attention_tile.h"

namespace ferrum_kv::kernels {

template <class Isa>
struct VectorExp {
  using V = typename Isa::V;
  // exp(x) for x <= 0 (scores minus their running max), Cephes' expf polynomial after the
  // reduction x = n ln2 + r, |r| <= ln2 / 2; relative error about 2 ulp. Inputs below -87 give
  // exp(-87) ~ 1.6e-38 instead of a subnormal.
  static V Exp(V x) {
    x = Isa::Max(x, Isa::Set1(-87.0f));
    const V n = Isa::RoundNearest(Isa::Mul(x, Isa::Set1(1.44269504088896341f)));
    V r = Isa::Fma(n, Isa::Set1(-0.693359375f), x);
    r = Isa::Fma(n, Isa::Set1(2.12194440e-4f), r);
    V y = Isa::Set1(1.9875691500e-4f);
    y = Isa::Fma(y, r, Isa::Set1(1.3981999507e-3f));
    y = Isa::Fma(y, r, Isa::Set1(8.3334519073e-3f));
    y = Isa::Fma(y, r, Isa::Set1(4.1665795894e-2f));
    y = Isa::Fma(y, r, Isa::Set1(1.6666665459e-1f));
    y = Isa::Fma(y, r, Isa::Set1(5.0000001201e-1f));
    y = Isa::Fma(y, Isa::Mul(r, r), Isa::Add(r, Isa::Set1(1.0f)));
    return Isa::Scale2(y, n);
  }

  // cap * tanh(x / cap), inv_cap = 1 / cap: Cephes' tanhf (odd polynomial for |y| < 0.625,
  // (1 - e^-2|y|) / (1 + e^-2|y|) with the sign restored above), relative error a few ulp.
  static V SoftCap(V x, V cap, V inv_cap) {
    const V y = Isa::Mul(x, inv_cap);
    const V zero = Isa::Zero();
    const V neg_y = Isa::Sub(zero, y);
    const V abs_y = Isa::Max(y, neg_y);
    const V z = Isa::Mul(y, y);
    V p = Isa::Set1(-5.70498872745e-3f);
    p = Isa::Fma(p, z, Isa::Set1(2.06390887954e-2f));
    p = Isa::Fma(p, z, Isa::Set1(-5.37397155531e-2f));
    p = Isa::Fma(p, z, Isa::Set1(1.33314422036e-1f));
    p = Isa::Fma(p, z, Isa::Set1(-3.33332819422e-1f));
    const V small = Isa::Fma(Isa::Mul(p, z), y, y);
    const V e = Exp(Isa::Mul(abs_y, Isa::Set1(-2.0f)));
    const V one = Isa::Set1(1.0f);
    const V large_abs = Isa::Div(Isa::Sub(one, e), Isa::Add(one, e));
    const V large = Isa::Select(Isa::Less(y, zero), Isa::Sub(zero, large_abs), large_abs);
    return Isa::Mul(cap, Isa::Select(Isa::Less(abs_y, Isa::Set1(0.625f)), small, large));
  }
};

// 0, 1, ..., kSpanTokens - 1 as floats (the key offsets of a span, for ALiBi).
struct SpanIota {
  alignas(64) float values[kSpanTokens];
  constexpr SpanIota() : values() {
    for (int i = 0; i < kSpanTokens; ++i) values[i] = static_cast<float>(i);
  }
};
inline constexpr SpanIota kSpanIota{};

// The fast quantized kernels (attention_quant_avx512fast.cc, attention_fp8_avx512fp16.cc) reuse
// the spans, softmax and reductions below.
template <class Isa, DType kDType>
class QuantFastTile;
template <class Isa, DType kDType>
class Fp8HalfTile;

template <class Isa, DType kDType>
class TileKernel {
  friend class QuantFastTile<Isa, kDType>;
  friend class Fp8HalfTile<Isa, kDType>;

  using V = typename Isa::V;
  static constexpr int kW = Isa::kWidth;
  static constexpr int kRowGroup = 4;
  // Keys scored together: each q vector is loaded once per kScoreKeys keys.
  static constexpr int kScoreKeys = 4;

 public:
  using Load = KvLoad<Isa, kDType>;
  using Elem = typename Load::Elem;
  static constexpr bool kFastBf16 = Isa::kBf16Dot && kDType == DType::kBFloat16;
  // The narrow path's query rows: float32, or bfloat16 padded to whole 2 kW vectors (kFastBf16).
  using QElem = std::conditional_t<kFastBf16, uint16_t, float>;

  static void Run(const AttentionTile& t) {
    const int d = t.head_dim;
    for (int r = 0; r < t.num_rows; ++r) {
      t.max[r] = -std::numeric_limits<float>::infinity();
      t.sum[r] = 0.0f;
      std::fill(t.acc + int64_t{r} * d, t.acc + int64_t{r + 1} * d, 0.0f);
    }
    if (kW > 1 && t.num_rows >= kW) {
      RunWide(t);
    } else {
      RunNarrow(t);
    }
    for (int r = 0; r < t.num_rows; ++r) Unpermute(t.acc + int64_t{r} * d, d);
  }

 private:
  // The K and V lines of the next span, prefetched a part at a time while the current span is
  // processed: its K lines while the current keys are scored, its V lines while the current
  // values are accumulated (on Zen 4 1.2-1.4x faster from DRAM than all of them during the
  // scores, docs/attention.md). The hardware prefetchers alone fall behind (one head's keys in a
  // block are a short stream and the next block is anywhere in the arena); issued in one burst,
  // a few hundred prefetches fill the core's miss queues and stall it until most lines have
  // arrived, which serialises memory and arithmetic again. The lines go to L2, not L1
  // (prefetcht1): a float32 span of 16 keys is 16 KiB of K and V, half of L1, and on Zen 4 a
  // decode tile streams from DRAM about 1.25-1.6 times faster than with prefetcht0.
  struct NextSpan {
    const uint8_t* k = nullptr;
    const uint8_t* v = nullptr;
    int64_t bytes = 0;
    // The span's K and V row parameters (quantized formats): at k_params / v_params, params_bytes.
    const uint8_t* k_params = nullptr;
    const uint8_t* v_params = nullptr;
    int64_t params_bytes = 0;
    int64_t k_issued = 0;
    int64_t v_issued = 0;
    // __builtin_prefetch's locality 2: prefetcht1, into L2 and below.
    static constexpr int kPrefetchLocality = 2;

    // Prefetch the first done/total of the span's K (V) lines, those not yet asked for: the score
    // passes advance the K lines, the value pass the V lines.
    void KeysUntil(int done, int total) { Lines(k, done, total, k_issued); }
    void ValuesUntil(int done, int total) { Lines(v, done, total, v_issued); }
    void Lines(const uint8_t* base, int done, int total, int64_t& issued) const {
      const int64_t target = bytes * done / total;
      for (; issued < target; issued += 64) __builtin_prefetch(base + issued, 0, kPrefetchLocality);
    }
  };

  // Consecutive K or V rows of one head region (a span): row j's elements at data + j *
  // row_elems, its quantization parameters (quantized formats) at params + j * params_per_row.
  // RowsOf<float> with another storage format: rows the wide path widened into a buffer (x_hat,
  // in the visiting order; no parameters).
  template <class E>
  struct RowsOf {
    const E* data;
    const float* params;
    int64_t row_elems;
    int params_per_row;

    const E* Row(int64_t j) const { return data + j * row_elems; }
    const float* Params(int64_t j) const { return params + j * params_per_row; }
    RowsOf From(int64_t j) const { return {Row(j), Params(j), row_elems, params_per_row}; }
  };
  using Rows = RowsOf<Elem>;

  // Keys per span of the narrow path with 16-bit K/V: at most about 8 KiB of K (and as much V),
  // when the blocks are that long. On Zen 4 from DRAM (2 threads, head_dim 128, block 64)
  // bfloat16 spans of 32 keys ran 1.2x faster than 64, float16 1.05-1.08x. docs/attention.md.
  static int NarrowSpanKeys(int d) {
    const int keys = static_cast<int>(8192 / (Load::RowElems(d) * int64_t{sizeof(Elem)}));
    return std::clamp(keys / kScoreKeys * kScoreKeys, kScoreKeys, int{kSpanTokens});
  }

  // Calls fn(pos, n, k, v, next) for consecutive spans of at most kSpanTokens (kCapped: at most
  // max_keys) keys inside one block, k and v pointing at the span's first key and value, next
  // describing the following span (fn advances its prefetch as it goes; the rest is issued after
  // fn).
  // (The span's block and offset advance with the spans: no division per span, which measured
  // about a tenth of the fast fp8 kernel's samples as idiv.)
  template <bool kCapped, class Fn>
  static void ForEachSpan(const AttentionTile& t, int max_keys, Fn&& fn) {
    if (!kCapped) max_keys = kSpanTokens;
    int64_t index = t.key_begin / t.block_size;  // into the block table
    int32_t offset = t.key_begin % t.block_size;
    for (int32_t pos = t.key_begin; pos < t.key_end;) {
      const int n = SpanKeys(t, pos, offset, max_keys);
      const int64_t block = t.block_table[index];
      const Rows k = SpanRows(t, t.k_base + block * t.block_bytes, offset);
      const Rows v = SpanRows(t, t.v_base + block * t.block_bytes, offset);
      offset += n;
      if (offset == t.block_size) {
        ++index;
        offset = 0;
      }
      NextSpan next;
      if (pos + n < t.key_end) next = Locate(t, pos + n, index, offset, max_keys);
      fn(pos, n, k, v, next);
      next.KeysUntil(1, 1);
      next.ValuesUntil(1, 1);
      pos += n;
    }
  }

  // The keys of the span from pos, at offset in its block.
  static int SpanKeys(const AttentionTile& t, int32_t pos, int32_t offset, int max_keys) {
    return std::min({t.block_size - offset, t.key_end - pos, max_keys, kSpanTokens});
  }

  // The K and V row parameters of the span next (quantized formats), for the fast kernels:
  // NextSpan prefetches only the codes, and a span's parameters are in other lines of the block
  // (their misses measured 11 % of the fast int8 kernel's samples without this).
  static void PrefetchParams(const NextSpan& next) {
    for (int64_t line = 0; line < next.params_bytes; line += 64) {
      __builtin_prefetch(next.k_params + line, 0, NextSpan::kPrefetchLocality);
      __builtin_prefetch(next.v_params + line, 0, NextSpan::kPrefetchLocality);
    }
  }

  // The rows from token offset of the head region at base.
  static Rows SpanRows(const AttentionTile& t, const uint8_t* base, int32_t offset) {
    const int64_t row_elems = Load::RowElems(t.head_dim);
    const int params_per_row = Load::ParamsPerRow(t.head_dim);
    return {reinterpret_cast<const Elem*>(base) + offset * row_elems,
            reinterpret_cast<const float*>(base + t.params_offset) + offset * params_per_row,
            row_elems, params_per_row};
  }

  // Few rows (decode): scores are dot products along head_dim, reduced horizontally.
  static void RunNarrow(const AttentionTile& t) {
    const int d = t.head_dim;
    const int rows = t.num_rows;
    alignas(64) float scores[kMaxTileRows * kSpanTokens] = {};
    const int qd = QueryStride(d);
    std::vector<QElem> q(size_t(rows) * qd, QElem{0});
    for (int r = 0; r < rows; ++r) {
      if constexpr (kFastBf16) {
        Isa::ToBf16(t.q + int64_t{r} * d, d, q.data() + size_t(r) * qd);
      } else {
        std::copy(t.q + int64_t{r} * d, t.q + int64_t{r + 1} * d, q.data() + size_t(r) * qd);
        Permute(q.data() + int64_t{r} * d, d);
      }
    }
    // float32 keeps whole 64-key spans (16 keys: 1.09x from DRAM but 0.94x in cache).
    constexpr bool kCapped = kDType != DType::kFloat32;
    // Folded formats: each row's sum of q (a K offset adds offset * sum(q) to a score) and its
    // running sum of weight * V offset, rescaled with acc (added to every column of acc at the
    // end); correction: the factor Softmax rescaled each row's acc by in the current span.
    float q_sum[kMaxTileRows] = {}, value_offset[kMaxTileRows] = {};
    float correction[kMaxTileRows];
    if constexpr (Load::kOffset) {
      for (int r = 0; r < rows; ++r) {
        const float* row = t.q + int64_t{r} * d;
        q_sum[r] = std::accumulate(row, row + d, 0.0f);
      }
    }
    ForEachSpan<kCapped>(t, NarrowSpanKeys(d), [&](int32_t pos, int n, const Rows& k,
                                                   const Rows& v, NextSpan& next) {
      ForRowGroups(rows, [&](auto nr, int r0) {
        ScoreRows<decltype(nr)::value>(q.data() + int64_t{r0} * qd, qd, d, k, n,
                                       scores + r0 * kSpanTokens, next);
      });
      if constexpr (Load::kFolded) {
        for (int r = 0; r < rows; ++r) FoldScores(k, n, q_sum[r], scores + r * kSpanTokens, 1);
      }
      SoftmaxRows(t, pos, n, scores, t.acc, d, correction);
      if constexpr (Load::kFolded) {
        for (int r = 0; r < rows; ++r) {
          const float span_offset = FoldWeights(v, n, scores + r * kSpanTokens, 1);
          value_offset[r] = value_offset[r] * correction[r] + span_offset;
        }
      }
      ForRowGroups(rows, [&](auto nr, int r0) {
        AccumulateVisible<decltype(nr)::value>(t, r0, pos, scores + r0 * kSpanTokens, 1, v, n,
                                               t.acc + int64_t{r0} * d, next);
      });
    });
    if constexpr (Load::kOffset) {
      for (int r = 0; r < rows; ++r) AddToRow(t.acc + int64_t{r} * d, d, value_offset[r]);
    }
  }

  // The narrow path's softmax of every row's scores (scores[r * kSpanTokens + j], keys pos + j,
  // j < n) with the tile's options, in place; row r's acc (stride floats apart) is rescaled, and
  // the factor it was rescaled by is stored in correction[r] (when correction is not null).
  static void SoftmaxRows(const AttentionTile& t, int32_t pos, int n, float* scores, float* acc,
                          int stride, float* correction = nullptr) {
    const bool plain = !t.row_begin && t.soft_cap == 0.0f && !t.row_slope;  // the hot path
    for (int r = 0; r < t.num_rows; ++r) {
      float* s = scores + r * kSpanTokens;
      float factor;
      if (plain) {
        factor = Softmax<false>(s, n, 0, t.row_end[r] - pos, t.max + r, t.sum + r,
                                acc + int64_t{r} * stride, stride);
      } else {
        const int32_t begin = t.row_begin ? t.row_begin[r] - pos : 0;
        const int32_t end = t.row_end[r] - pos;
        TransformRow(t, r, pos, s, std::clamp<int32_t>(begin, 0, n),
                     std::clamp<int32_t>(end, 0, n));
        factor = Softmax<true>(s, n, begin, end, t.max + r, t.sum + r, acc + int64_t{r} * stride,
                               stride);
      }
      if (correction) correction[r] = factor;
    }
  }

  // Folded formats: scores s[j * stride] = q . u_j of keys j < n become scale_j * s + offset_j *
  // q_sum, the scores of q . x_hat_j.
  static void FoldScores(const Rows& k, int n, float q_sum, float* s, int stride) {
    for (int j = 0; j < n; ++j) {
      const float* params = k.Params(j);
      s[j * stride] = s[j * stride] * Load::FoldScale(params) + Load::FoldOffset(params) * q_sum;
    }
  }

  // Folded formats: weights p[j * stride] of values j < n become p * scale_j (weights of the
  // loads u_j); returns sum of p * offset_j, which the caller adds to every column.
  static float FoldWeights(const Rows& v, int n, float* p, int stride) {
    float offset_sum = 0.0f;
    for (int j = 0; j < n; ++j) {
      const float* params = v.Params(j);
      offset_sum += p[j * stride] * Load::FoldOffset(params);
      p[j * stride] *= Load::FoldScale(params);
    }
    return offset_sum;
  }

  static void AddToRow(float* acc, int d, float x) {
    if (x == 0.0f) return;
    for (int c = 0; c < d; ++c) acc[c] += x;
  }

  // At least kW rows (prefill tiles, wide GQA groups): rows go in SIMD lanes. q is transposed
  // once per tile (qt[c][r]), so a score vector (one key, kW rows) is a chain of head_dim
  // broadcast-FMAs with no horizontal sum, 8 keys at a time; the online softmax runs on row
  // vectors too. Keys not in float32 are widened (and dequantized: x_hat) into a float buffer
  // once per span, and so are quantized values, so that every row group's FMAs read floats
  // (widening quantized values once per row group cost prefill 0.70-0.90x bfloat16's).
  static void RunWide(const AttentionTile& t) {
    const int d = t.head_dim;
    const int rows = t.num_rows;
    const int padded = (rows + kW - 1) / kW * kW;
    std::vector<float> qt(size_t(d) * padded, 0.0f);
    // Columns in the order WidenRows writes them.
    for (int r = 0; r < rows; ++r) {
      for (int i = 0; i < d; ++i) {
        const int c = kWideVisitOrder ? VisitedColumn(i, d) : i;
        qt[size_t(i) * padded + r] = t.q[int64_t{r} * d + c];
      }
    }
    std::vector<float> row_end(padded, 0.0f), max(padded), sum(padded);
    for (int r = 0; r < rows; ++r) row_end[r] = static_cast<float>(t.row_end[r]);
    // Optional features, in lanes: window start, query position, ALiBi slope of each row.
    const bool options = t.row_begin || t.soft_cap > 0.0f || t.row_slope;
    std::vector<float> row_begin, row_pos, row_slope;
    if (options) {
      // Built, not assign()ed: assign's out-of-line body, compiled for this file's instruction
      // set, could be the one the linker keeps for every file.
      row_begin = std::vector<float>(padded, 0.0f);
      row_pos = std::vector<float>(padded, 0.0f);
      row_slope = std::vector<float>(padded, 0.0f);
      for (int r = 0; r < rows; ++r) {
        if (t.row_begin) row_begin[r] = static_cast<float>(t.row_begin[r]);
        row_pos[r] = static_cast<float>(t.row_end[r] - 1);
        if (t.row_slope) row_slope[r] = t.row_slope[r];
      }
    }
    std::fill(max.begin(), max.end(), -std::numeric_limits<float>::infinity());
    std::fill(sum.begin(), sum.end(), 0.0f);
    std::vector<float> scores(size_t(kSpanTokens) * padded);  // [key][row]
    constexpr bool kWiden = kDType != DType::kFloat32;
    // (bfloat16 values are widened as they are read, one shift or mask per vector; quantized ones
    // would cost 3-8 operations per vector in every row group.)
    constexpr bool kWidenValues = Load::kQuantized;
    std::vector<float> keys(kWiden ? size_t(kSpanTokens) * d : 0);
    std::vector<float> values(kWidenValues ? size_t(kSpanTokens) * d : 0);
    std::vector<float> correction(padded);
    ForEachSpan<false>(t, kSpanTokens, [&](int32_t pos, int n, const Rows& k, const Rows& v,
                                           NextSpan& next) {
      const float* k32 = WidenRows(k, n, d, keys.data());
      for (int r0 = 0; r0 < padded; r0 += kW) {
        int j = 0;
        for (; j + 8 <= n; j += 8) {
          ScoreLanes<8>(qt.data() + r0, padded, k32 + int64_t{j} * d, d,
                        scores.data() + size_t(j) * padded + r0);
          next.KeysUntil(j + 8, n);
        }
        for (; j < n; ++j) ScoreLanes<1>(qt.data() + r0, padded, k32 + int64_t{j} * d, d,
                                          scores.data() + size_t(j) * padded + r0);
        if (options) {
          TransformLanes(t, scores.data() + r0, padded, n, pos, row_begin.data() + r0,
                         row_pos.data() + r0, row_slope.data() + r0);
        }
        SoftmaxLanes(scores.data() + r0, padded, n, pos, row_end.data() + r0, max.data() + r0,
                     sum.data() + r0, correction.data() + r0);
      }
      for (int r = 0; r < rows; ++r) {
        if (correction[r] == 1.0f) continue;
        float* acc = t.acc + int64_t{r} * d;
        for (int c = 0; c < d; ++c) acc[c] *= correction[r];
      }
      const auto accumulate = [&](const auto& value_rows) {
        ForRowGroups(rows, [&](auto nr, int r0) {
          AccumulateVisible<decltype(nr)::value>(t, r0, pos, scores.data() + r0, padded,
                                                 value_rows, n, t.acc + int64_t{r0} * d, next);
        });
      };
      if constexpr (kWidenValues) {
        accumulate(RowsOf<float>{WidenRows(v, n, d, values.data()), nullptr, d, 0});
      } else {
        accumulate(v);
      }
    });
    std::copy(max.begin(), max.begin() + rows, t.max);
    std::copy(sum.begin(), sum.begin() + rows, t.sum);
  }

  // The span's n rows (keys or values) as float rows of d: the storage itself for float32;
  // float16 and bfloat16 (keys only) widened into buffer as one run in column order; quantized
  // formats widened and dequantized (x_hat) into buffer in the visiting order (kWideVisitOrder).
  static const float* WidenRows(const Rows& rows, int n, int d, float* buffer) {
    if constexpr (kDType == DType::kFloat32) return rows.data;
    if constexpr (!kWideVisitOrder) {  // 16-bit rows are contiguous
      const int64_t total = int64_t{n} * d;
      int64_t i = 0;
      for (; i + kW <= total; i += kW) {
        Isa::Store(buffer + i, Load::Load(rows.data, nullptr, static_cast<int>(i)));
      }
      if (i < total) {
        const int rest = static_cast<int>(total - i);
        Isa::StorePartial(buffer + i, Load::LoadPartial(rows.data, nullptr, int(i), rest), rest);
      }
      return buffer;
    }
    for (int j = 0; j < n; ++j) {
      const Elem* row = rows.Row(j);
      const float* params = rows.Params(j);
      float* out = buffer + int64_t{j} * d;
      V scale = Isa::Set1(1.0f), offset = Isa::Zero();
      if constexpr (Load::kFolded) {
        scale = Isa::Set1(Load::FoldScale(params));
        offset = Isa::Set1(Load::FoldOffset(params));
      }
      int c = 0;
      for (; c < PairedColumns(d); c += 2 * kW) {  // (kPairs formats are not folded)
        V pair[2];
        LoadColumns<2>(row, params, c, pair);
        Isa::Store(out + c, pair[0]);
        Isa::Store(out + c + kW, pair[1]);
      }
      for (; c + kW <= d; c += kW) {
        V x = Load::Load(row, params, c);
        if constexpr (Load::kFolded) x = Isa::Fma(x, scale, offset);
        Isa::Store(out + c, x);
      }
      if (c < d) {
        V x = Load::LoadPartial(row, params, c, d - c);
        if constexpr (Load::kFolded) x = Isa::Fma(x, scale, offset);
        Isa::StorePartial(out + c, x, d - c);
      }
    }
    return buffer;
  }

  // scores[j * stride] (kW row lanes) = sum over c of k[j * d + c] * qt[c * stride], j < NK.
  template <int NK>
  static void ScoreLanes(const float* qt, int stride, const float* k, int d, float* scores) {
    V acc[NK];
    for (int j = 0; j < NK; ++j) acc[j] = Isa::Zero();
    for (int c = 0; c < d; ++c) {
      const V query = Isa::Load(qt + size_t(c) * stride);
      for (int j = 0; j < NK; ++j) acc[j] = Isa::Fma(Isa::Set1(k[j * d + c]), query, acc[j]);
    }
    for (int j = 0; j < NK; ++j) Isa::Store(scores + size_t(j) * stride, acc[j]);
  }

  // The optional logit features for kW rows (lanes) of scores s[j * stride], keys pos + j:
  // soft cap, ALiBi, and -inf before each row's window start (SoftmaxLanes gives those weight 0).
  static void TransformLanes(const AttentionTile& t, float* s, int stride, int n, int32_t pos,
                             const float* row_begin, const float* row_pos, const float* row_slope) {
    const V neg_inf = Isa::Set1(-std::numeric_limits<float>::infinity());
    const V cap = Isa::Set1(t.soft_cap);
    const V inv_cap = Isa::Set1(t.soft_cap > 0.0f ? 1.0f / t.soft_cap : 0.0f);
    const V begin = Isa::Load(row_begin);
    const V query_pos = Isa::Load(row_pos);
    const V slope = Isa::Load(row_slope);
    for (int j = 0; j < n; ++j) {
      float* sj = s + size_t(j) * stride;
      const V key = Isa::Set1(static_cast<float>(pos + j));
      V x = Isa::Load(sj);
      if (t.soft_cap > 0.0f) x = VectorExp<Isa>::SoftCap(x, cap, inv_cap);
      if (t.row_slope) x = Isa::Fma(slope, Isa::Sub(key, query_pos), x);
      if (t.row_begin) x = Isa::Select(Isa::Less(key, begin), neg_inf, x);
      Isa::Store(sj, x);
    }
  }

  // Soft cap and ALiBi on row r's scores s[lo, hi) (keys pos + j), in whole vectors: the lanes
  // outside [lo, hi) are inside s's kSpanTokens and are cleared by Softmax.
  static void TransformRow(const AttentionTile& t, int r, int32_t pos, float* s, int lo, int hi) {
    if (lo >= hi || (t.soft_cap == 0.0f && !t.row_slope)) return;
    const V cap = Isa::Set1(t.soft_cap);
    const V inv_cap = Isa::Set1(t.soft_cap > 0.0f ? 1.0f / t.soft_cap : 0.0f);
    const V slope = Isa::Set1(t.row_slope ? t.row_slope[r] : 0.0f);
    // Distance of key pos + j from the query (position row_end[r] - 1), minus j.
    const V offset = Isa::Set1(static_cast<float>(pos - (t.row_end[r] - 1)));
    for (int j = lo / kW * kW; j < hi; j += kW) {
      V x = Isa::Load(s + j);
      if (t.soft_cap > 0.0f) x = VectorExp<Isa>::SoftCap(x, cap, inv_cap);
      if (t.row_slope) x = Isa::Fma(slope, Isa::Add(Isa::Load(kSpanIota.values + j), offset), x);
      Isa::Store(s + j, x);
    }
  }

  // The online softmax of Softmax below for kW rows at once (lanes), scores s[j * stride]:
  // masks keys at or past each row's end, turns scores into weights in place, updates max and
  // sum, and leaves in correction[] the factor each row's acc must be multiplied by.
  static void SoftmaxLanes(float* s, int stride, int n, int32_t pos, const float* row_end,
                           float* max, float* sum, float* correction) {
    const V neg_inf = Isa::Set1(-std::numeric_limits<float>::infinity());
    const V end = Isa::Load(row_end);
    V span_max = neg_inf;
    for (int j = 0; j < n; ++j) {
      float* sj = s + size_t(j) * stride;
      const auto visible = Isa::Less(Isa::Set1(static_cast<float>(pos + j)), end);
      const V score = Isa::Select(visible, Isa::Load(sj), neg_inf);
      Isa::Store(sj, score);
      span_max = Isa::Max(span_max, score);
    }
    const V old_max = Isa::Load(max);
    const V new_max = Isa::Max(old_max, span_max);
    // Rows with no visible key yet keep max = -inf; shift by 0 there to avoid inf - inf.
    const V shift = Isa::Select(Isa::Less(neg_inf, new_max), new_max, Isa::Zero());
    const V factor = Isa::Select(Isa::Less(neg_inf, old_max),
                                 VectorExp<Isa>::Exp(Isa::Sub(old_max, shift)), Isa::Zero());
    V total = Isa::Mul(Isa::Load(sum), factor);
    for (int j = 0; j < n; ++j) {
      float* sj = s + size_t(j) * stride;
      const V score = Isa::Load(sj);
      const V p = Isa::Select(Isa::Less(neg_inf, score),
                              VectorExp<Isa>::Exp(Isa::Sub(score, shift)), Isa::Zero());
      Isa::Store(sj, p);
      total = Isa::Add(total, p);
    }
    Isa::Store(sum, total);
    Isa::Store(max, new_max);
    Isa::Store(correction, factor);
  }

  template <int N>
  using Int = std::integral_constant<int, N>;

  // Calls fn(Int<nr>, r0) for consecutive groups of at most kRowGroup rows.
  template <class Fn>
  static void ForRowGroups(int rows, Fn&& fn) {
    for (int r0 = 0; r0 < rows; r0 += kRowGroup) {
      switch (std::min(kRowGroup, rows - r0)) {
        case 1: fn(Int<1>{}, r0); break;
        case 2: fn(Int<2>{}, r0); break;
        case 3: fn(Int<3>{}, r0); break;
        default: fn(Int<4>{}, r0); break;
      }
    }
  }

  // Calls fn(Int<kGroup>, j) for consecutive groups of kGroup keys j .. j + kGroup - 1 of a span
  // of n, advancing next's K prefetch after each, then fn(Int<1>, j) for the last n % kGroup keys.
  template <int kGroup, class Fn>
  static void ForKeyGroups(int n, NextSpan& next, Fn&& fn) {
    int j = 0;
    for (; j + kGroup <= n; j += kGroup) {
      fn(Int<kGroup>{}, j);
      next.KeysUntil(j + kGroup, n);
    }
    for (; j < n; ++j) fn(Int<1>{}, j);
  }

  // The span starting at pos (block table entry index, offset in the block), as ForEachSpan
  // cuts them.
  static NextSpan Locate(const AttentionTile& t, int32_t pos, int64_t index, int32_t offset,
                         int max_keys) {
    const int n = SpanKeys(t, pos, offset, max_keys);
    const int64_t block_begin = int64_t{t.block_table[index]} * t.block_bytes;
    const int64_t row_bytes = Load::RowElems(t.head_dim) * int64_t{sizeof(Elem)};
    const int64_t begin = block_begin + int64_t{offset} * row_bytes;
    NextSpan next;
    next.k = t.k_base + begin;
    next.v = t.v_base + begin;
    next.bytes = int64_t{n} * row_bytes;
    const int64_t params_row_bytes = Load::ParamsPerRow(t.head_dim) * int64_t{sizeof(float)};
    const int64_t params_begin = block_begin + t.params_offset + offset * params_row_bytes;
    next.k_params = t.k_base + params_begin;
    next.v_params = t.v_base + params_begin;
    next.params_bytes = n * params_row_bytes;
    return next;
  }

  // Columns [0, PairedColumns(d)) are read as (even, odd) halves of 2 kW blocks.
  static constexpr bool kPairs = Load::kPairs;
  // The column of its 2 kW block that the i-th visited column is: (even ones, odd ones), or with
  // kFastBf16 the order of Isa::InterleaveBf16 (its 128-bit lane L of vector v holds columns
  // 8L + 4v .. 8L + 4v + 3), which Isa::LoadBf16Pairs then follows too.
  static int PairedColumn(int i) {
    if constexpr (kFastBf16) {
      const int lane = i % kW;
      return 8 * (lane / 4) + 4 * (i / kW) + lane % 4;
    } else {
      return i < kW ? 2 * i : 2 * (i - kW) + 1;
    }
  }
  // The wide path's buffers hold quantized formats' rows in the visiting order (the values' order
  // must be acc's), 16-bit keys in column order (one run of the span, cheapest to widen).
  static constexpr bool kWideVisitOrder = Load::kQuantized;
  // The column visited i-th (of head_dim d).
  static int VisitedColumn(int i, int d) {
    if (i >= PairedColumns(d)) return i;
    return i / (2 * kW) * (2 * kW) + PairedColumn(i % (2 * kW));
  }
  // Elements per query row in the narrow path.
  static int QueryStride(int d) { return kFastBf16 ? (d + 2 * kW - 1) / (2 * kW) * (2 * kW) : d; }
  static int PairedColumns(int d) { return kPairs ? d / (2 * kW) * (2 * kW) : 0; }

  // out[i] = the i-th kW columns of row from column c, in the visiting order above (NC even or
  // c past the paired columns); a widened row (float, in that order already) is read as it is.
  template <int NC, class E>
  static void LoadColumns(const E* row, const float* params, int c, V* out) {
    if constexpr (!std::is_same_v<E, Elem>) {
      for (int i = 0; i < NC; ++i) out[i] = Isa::Load(row + c + i * kW);
    } else if constexpr (kPairs && NC % 2 == 0) {
      for (int i = 0; i < NC; i += 2) Load::LoadPairs(row, params, c + i * kW, out + i);
    } else {
      for (int i = 0; i < NC; ++i) out[i] = Load::Load(row, params, c + i * kW);
    }
  }

  // The last n < kW columns from c of a row (the other lanes 0).
  template <class E>
  static V LoadPartialColumns(const E* row, const float* params, int c, int n) {
    if constexpr (std::is_same_v<E, Elem>) {
      return Load::LoadPartial(row, params, c, n);
    } else {
      return Isa::LoadPartial(row + c, n);
    }
  }

  // A row of head_dim floats from column order into the visiting order, and back.
  static void Permute(float* x, int d) { Reorder<true>(x, d); }
  static void Unpermute(float* x, int d) { Reorder<false>(x, d); }
  template <bool kForward>
  static void Reorder(float* x, int d) {
    float block[2 * kW];
    for (int c = 0; c < PairedColumns(d); c += 2 * kW) {
      std::copy(x + c, x + c + 2 * kW, block);
      for (int i = 0; i < 2 * kW; ++i) {
        if (kForward) {
          x[c + i] = block[PairedColumn(i)];
        } else {
          x[c + PairedColumn(i)] = block[i];
        }
      }
    }
  }

  // scores[r * kSpanTokens + j] = q[r] . k[j] for r < NR, j < n (q rows qd elements apart).
  // Advances next's K prefetch with the keys.
  template <int NR>
  static void ScoreRows(const QElem* q, int qd, int d, const Rows& k, int n, float* scores,
                        NextSpan& next) {
    ForKeyGroups<kScoreKeys>(n, next, [&](auto nk, int j) {
      ScoreKeys<NR, decltype(nk)::value>(q, qd, d, k.From(j), scores + j);
    });
  }

  template <int NR, int NK>
  static void ScoreKeys(const QElem* q, int qd, int d, const Rows& k, float* scores) {
    V acc[NR][NK];
    if constexpr (kFastBf16) {
      ScoreKeysBf16Dot<NR, NK>(q, qd, d, k, acc);
    } else {
      ScoreKeysFma<NR, NK>(q, d, k, acc);
    }
    StoreScores<NR, NK>(acc, scores);
  }

  // acc[r][j] (lanes to be summed) for q[r] . k[j]: float32 FMAs on widened keys.
  template <int NR, int NK>
  static void ScoreKeysFma(const float* q, int d, const Rows& k, V (&acc)[NR][NK]) {
    for (int r = 0; r < NR; ++r)
      for (int j = 0; j < NK; ++j) acc[r][j] = Isa::Zero();
    int c = 0;
    for (; c + 2 * kW <= d; c += 2 * kW) {
      V key[NK][2];
      for (int j = 0; j < NK; ++j) LoadColumns<2>(k.Row(j), k.Params(j), c, key[j]);
      for (int r = 0; r < NR; ++r) {
        for (int i = 0; i < 2; ++i) {
          const V query = Isa::Load(q + r * d + c + i * kW);
          for (int j = 0; j < NK; ++j) acc[r][j] = Isa::Fma(query, key[j][i], acc[r][j]);
        }
      }
    }
    for (; c + kW <= d; c += kW) {
      V key[NK];
      for (int j = 0; j < NK; ++j) key[j] = Load::Load(k.Row(j), k.Params(j), c);
      for (int r = 0; r < NR; ++r) {
        const V query = Isa::Load(q + r * d + c);
        for (int j = 0; j < NK; ++j) acc[r][j] = Isa::Fma(query, key[j], acc[r][j]);
      }
    }
    if (c < d) {
      const int rest = d - c;
      V key[NK];
      for (int j = 0; j < NK; ++j) key[j] = Load::LoadPartial(k.Row(j), k.Params(j), c, rest);
      for (int r = 0; r < NR; ++r) {
        const V query = Isa::LoadPartial(q + r * d + c, rest);
        for (int j = 0; j < NK; ++j) acc[r][j] = Isa::Fma(query, key[j], acc[r][j]);
      }
    }
  }

  // The same with bfloat16 dot products: q rows are bfloat16, zero-padded to qd (a multiple of
  // 2 kW) elements; the keys' last partial vector is read with a mask.
  template <int NR, int NK>
  static void ScoreKeysBf16Dot(const uint16_t* q, int qd, int d, const Rows& k,
                               V (&acc)[NR][NK]) {
    for (int r = 0; r < NR; ++r)
      for (int j = 0; j < NK; ++j) acc[r][j] = Isa::Zero();
    for (int c = 0; c < d; c += 2 * kW) {
      typename Isa::B key[NK];
      for (int j = 0; j < NK; ++j) {
        key[j] = c + 2 * kW <= d ? Isa::LoadBf16Raw(k.Row(j) + c)
                                 : Isa::LoadBf16RawPartial(k.Row(j) + c, d - c);
      }
      for (int r = 0; r < NR; ++r) {
        const typename Isa::B query = Isa::LoadBf16Raw(q + r * qd + c);
        for (int j = 0; j < NK; ++j) acc[r][j] = Isa::Dot(acc[r][j], query, key[j]);
      }
    }
  }

  // scores[r * kSpanTokens + j] = the lane sum of acc[r][j].
  template <int NR, int NK>
  static void StoreScores(V (&acc)[NR][NK], float* scores) {
    if constexpr (NR * NK % 8 == 0) {  // the common case: transposing reductions of 8
      float sums[NR * NK];
      for (int i = 0; i < NR * NK; i += 8) Isa::ReduceAdd8(&acc[0][0] + i, sums + i);
      for (int r = 0; r < NR; ++r)
        for (int j = 0; j < NK; ++j) scores[r * kSpanTokens + j] = sums[r * NK + j];
    } else {
      for (int r = 0; r < NR; ++r)
        for (int j = 0; j < NK; ++j) scores[r * kSpanTokens + j] = Isa::ReduceAdd(acc[r][j]);
    }
  }

  // Turns one row's scores s[0, n) into weights p (in place) for its visible keys
  // begin <= j < visible (p = 0 elsewhere), folding them into the row's running (max, sum) and
  // rescaling its acc; returns the factor acc was rescaled by. kBegin false (no sliding window)
  // ignores begin: the plain hot path.
  template <bool kBegin>
  static float Softmax(float* s, int n, int32_t begin, int32_t visible, float* max, float* sum,
                      float* acc, int d) {
    const int nv = static_cast<int>(std::clamp<int32_t>(visible, 0, n));
    const int lo = kBegin ? static_cast<int>(std::clamp<int32_t>(begin, 0, nv)) : 0;
    if (lo == nv) {
      std::fill(s, s + n, 0.0f);
      return 1.0f;
    }
    // s has kSpanTokens (a multiple of kW) elements: whole vectors up to n, the lanes outside
    // [lo, nv) set to -inf and then to weight 0.
    const V neg_inf = Isa::Set1(-std::numeric_limits<float>::infinity());
    const V end = Isa::Set1(static_cast<float>(nv));
    const V start = Isa::Set1(static_cast<float>(lo));
    V max_vector = neg_inf;
    for (int j = 0; j < n; j += kW) {
      const V key = Isa::Load(kSpanIota.values + j);
      V x = Isa::Select(Isa::Less(key, end), Isa::Load(s + j), neg_inf);
      if (kBegin) x = Isa::Select(Isa::Less(key, start), neg_inf, x);
      Isa::Store(s + j, x);
      max_vector = Isa::Max(max_vector, x);
    }
    const float new_max = std::max(*max, Isa::ReduceMax(max_vector));
    // 0 for the first span (max = -inf); exp is skipped while the max holds.
    const float correction = new_max == *max ? 1.0f : std::exp(*max - new_max);
    const V shift = Isa::Set1(new_max);
    V sum_vector = Isa::Zero();
    for (int j = 0; j < n; j += kW) {
      const V x = Isa::Load(s + j);
      const V p = Isa::Select(Isa::Less(neg_inf, x), VectorExp<Isa>::Exp(Isa::Sub(x, shift)),
                              Isa::Zero());
      Isa::Store(s + j, p);
      sum_vector = Isa::Add(sum_vector, p);
    }
    const float span_sum = Isa::ReduceAdd(sum_vector);
    *sum = *sum * correction + span_sum;
    if (correction != 1.0f) {
      for (int c = 0; c < d; ++c) acc[c] *= correction;
    }
    *max = new_max;
    return correction;
  }

  // AccumulateRows for rows r0 .. r0 + NR - 1 of the span's keys pos .. pos + n - 1, over only
  // the keys some of them see. A masked key must add nothing even when its V is inf or NaN
  // (0 * inf is NaN). When every row sees every key of the span (decode, and prefill away from
  // the causal diagonal and window starts) they are accumulated here exactly as before; other
  // spans take the out-of-line AccumulateRagged (any other test here cost decode 4-9%).
  template <int NR, class E>
  [[gnu::always_inline]] static void AccumulateVisible(const AttentionTile& t, int r0, int32_t pos,
                                                       const float* p, int key_stride,
                                                       const RowsOf<E>& v, int n, float* acc,
                                                       NextSpan& next) {
    bool all_keys = true;
    for (int r = r0; r < r0 + NR; ++r) {
      all_keys = all_keys && t.row_end[r] - pos >= n && (!t.row_begin || t.row_begin[r] <= pos);
    }
    if (all_keys) return AccumulateRows<NR, false>(p, key_stride, v, n, t.head_dim, acc, next);
    // A copy goes out of line: `next` itself never escapes, so it stays in registers.
    NextSpan ragged_next = next;
    AccumulateRagged<NR>(t, r0, pos, p, key_stride, v, n, acc, ragged_next);
    next = ragged_next;
  }

  // The keys [lo, hi) of the span (keys pos .. pos + n - 1) that row r sees.
  static std::pair<int, int> VisibleKeys(const AttentionTile& t, int r, int32_t pos, int n) {
    const int hi = static_cast<int>(std::clamp<int32_t>(t.row_end[r] - pos, 0, n));
    const int lo = t.row_begin ? static_cast<int>(std::clamp<int32_t>(t.row_begin[r] - pos, 0, hi))
                               : 0;
    return {lo, hi};
  }

  // AccumulateVisible's rows that see different keys: the keys all of them see with plain FMAs,
  // the keys only some see skipping the rows that give them weight 0, the others not at all.
  template <int NR, class E>
  [[gnu::noinline, gnu::cold]] static void AccumulateRagged(const AttentionTile& t, int r0,
                                                            int32_t pos, const float* p,
                                                            int key_stride, const RowsOf<E>& v,
                                                            int n, float* acc, NextSpan& next) {
    int all_lo = 0, all_hi = n, any_lo = n, any_hi = 0;
    for (int r = r0; r < r0 + NR; ++r) {
      const auto [lo, hi] = VisibleKeys(t, r, pos, n);
      all_lo = std::max(all_lo, lo);
      all_hi = std::min(all_hi, hi);
      if (lo < hi) {
        any_lo = std::min(any_lo, lo);
        any_hi = std::max(any_hi, hi);
      }
    }
    const int d = t.head_dim;
    const auto keys = [&](auto skip_zero, int lo, int hi) {
      if (lo >= hi) return;
      AccumulateRows<NR, decltype(skip_zero)::value>(p + int64_t{lo} * key_stride, key_stride,
                                                     v.From(lo), hi - lo, d, acc, next);
    };
    if (all_lo >= all_hi) {
      keys(std::true_type{}, any_lo, any_hi);
    } else {
      keys(std::true_type{}, any_lo, all_lo);
      keys(std::false_type{}, all_lo, all_hi);
      keys(std::true_type{}, all_hi, any_hi);
    }
  }

  // acc[r * d + c] += sum over j < n of p[r * row_stride + j * key_stride] * v[j * d + c],
  // r < NR, where key_stride is 1 and row_stride kSpanTokens (narrow path's [row][key] weights)
  // or key_stride is given and row_stride 1 (wide path's [key][row] weights); kSkipZero: terms
  // with p = 0 are left out. Advances next's V prefetch with the columns.
  // (Forced inline: with the ragged path's extra call sites the compiler would otherwise call
  // these out of line from the hot loop, about 1.15x slower decode.)
  template <int NR, bool kSkipZero, class E>
  [[gnu::always_inline]] static void AccumulateRows(const float* p, int key_stride,
                                                    const RowsOf<E>& v, int n, int d, float* acc,
                                                    NextSpan& next) {
    const int row_stride = key_stride == 1 ? kSpanTokens : 1;
    int c = 0;
    if constexpr (kFastBf16 && !kSkipZero && std::is_same_v<E, Elem>) {
      // Each row's weights in bfloat16: keys 2i and 2i + 1 side by side (the last key of an odd
      // span pairs with weight 0 and reads its own row twice).
      alignas(64) uint16_t weights[NR][kSpanTokens];
      for (int r = 0; r < NR; ++r) {
        if (key_stride == 1) {
          Isa::ToBf16(p + r * row_stride, n, weights[r]);
        } else {
          alignas(64) float row[kSpanTokens];
          for (int j = 0; j < n; ++j) row[j] = p[r * row_stride + j * key_stride];
          Isa::ToBf16(row, n, weights[r]);
        }
      }
      for (; c + 2 * kW <= d; c += 2 * kW) {
        AccumulateBf16Pairs<NR>(weights, v.data + c, n, d, acc + c);
        next.ValuesUntil(c + 2 * kW, d);
      }
    }
    for (; c + 2 * kW <= d; c += 2 * kW) {
      AccumulateColumns<NR, 2, kSkipZero>(p, row_stride, key_stride, v, c, n, d, acc + c, kW);
      next.ValuesUntil(c + 2 * kW, d);
    }
    for (; c + kW <= d; c += kW)
      AccumulateColumns<NR, 1, kSkipZero>(p, row_stride, key_stride, v, c, n, d, acc + c, kW);
    if (c < d) {
      AccumulateColumns<NR, 1, kSkipZero>(p, row_stride, key_stride, v, c, n, d, acc + c, d - c);
    }
  }

  // acc[r][c] += the weighted sum of the span's values, for the 2 kW columns at v / acc, by
  // bfloat16 dot products over pairs of keys (kFastBf16).
  // (weights: each row's bfloat16 weights, keys 2i and 2i + 1 side by side.)
  template <int NR>
  [[gnu::always_inline]] static void AccumulateBf16Pairs(const uint16_t (&weights)[NR][kSpanTokens],
                                                         const uint16_t* v, int n, int d,
                                                         float* acc) {
    V a[NR][2];
    for (int r = 0; r < NR; ++r) {
      a[r][0] = Isa::Load(acc + r * d);
      a[r][1] = Isa::Load(acc + r * d + kW);
    }
    for (int j = 0; j < n; j += 2) {
      typename Isa::B pairs[2];
      const uint16_t* row = v + int64_t{j} * d;
      Isa::InterleaveBf16(row, j + 1 < n ? row + d : row, pairs);
      for (int r = 0; r < NR; ++r) {
        const typename Isa::B weight = Isa::Broadcast(weights[r] + j);
        a[r][0] = Isa::Dot(a[r][0], weight, pairs[0]);
        a[r][1] = Isa::Dot(a[r][1], weight, pairs[1]);
      }
    }
    for (int r = 0; r < NR; ++r) {
      Isa::Store(acc + r * d, a[r][0]);
      Isa::Store(acc + r * d + kW, a[r][1]);
    }
  }

  // NC vectors of columns starting at column c of v's rows / at acc; width < kW only for the
  // last, partial vector.
  template <int NR, int NC, bool kSkipZero, class E>
  [[gnu::always_inline]] static void AccumulateColumns(const float* p, int row_stride,
                                                       int key_stride, const RowsOf<E>& v, int c,
                                                       int n, int d, float* acc, int width) {
    const bool partial = width < kW;
    V a[NR][NC];
    for (int r = 0; r < NR; ++r)
      for (int i = 0; i < NC; ++i)
        a[r][i] = partial ? Isa::LoadPartial(acc + r * d, width) : Isa::Load(acc + r * d + i * kW);
    for (int j = 0; j < n; ++j) {
      V value[NC];
      if (partial) {
        value[0] = LoadPartialColumns(v.Row(j), v.Params(j), c, width);
      } else {
        LoadColumns<NC>(v.Row(j), v.Params(j), c, value);
      }
      for (int r = 0; r < NR; ++r) {
        const float w = p[r * row_stride + j * key_stride];
        if (kSkipZero && w == 0.0f) continue;
        const V weight = Isa::Set1(w);
        for (int i = 0; i < NC; ++i) a[r][i] = Isa::Fma(weight, value[i], a[r][i]);
      }
    }
    for (int r = 0; r < NR; ++r) {
      for (int i = 0; i < NC; ++i) {
        if (partial) {
          Isa::StorePartial(acc + r * d, a[r][i], width);
        } else {
          Isa::Store(acc + r * d + i * kW, a[r][i]);
        }
      }
    }
  }
};

// The entry point each attention_<isa>.cc exports: dispatch on the storage dtype.
template <class Isa>
void RunAttentionTile(const AttentionTile& tile) {
  switch (tile.dtype) {
    case DType::kFloat32: return TileKernel<Isa, DType::kFloat32>::Run(tile);
    case DType::kFloat16: return TileKernel<Isa, DType::kFloat16>::Run(tile);
    case DType::kBFloat16: return TileKernel<Isa, DType::kBFloat16>::Run(tile);
    case DType::kInt8: return TileKernel<Isa, DType::kInt8>::Run(tile);
    case DType::kFp8E4M3: return TileKernel<Isa, DType::kFp8E4M3>::Run(tile);
    case DType::kFp8E5M2: return TileKernel<Isa, DType::kFp8E5M2>::Run(tile);
    case DType::kInt4: return TileKernel<Isa, DType::kInt4>::Run(tile);
  }
}

}  // namespace ferrum_kv::kernels
