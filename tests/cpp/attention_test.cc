#include "ferrum_kv/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "ferrum_kv/dtype_convert.h"
#include "ferrum_kv/errors.h"

namespace ferrum_kv {
namespace {

// The SIMD kernels accumulate in float32 and use a polynomial exp; against the float64 oracle their
// relative error ||out - ref|| / ||ref|| stays near 1e-7 on these sizes. 1e-5 leaves room and
// still catches any wrong key, weight or row (those give errors of order 1).
constexpr double kTolerance = 1e-5;

struct Case {
  int32_t num_kv_heads, group, head_dim, block_size;
  DType dtype;
  std::vector<int32_t> context_lens;
  std::vector<int32_t> query_lens;  // empty for decode
  // Optional features (0 / false = off); ALiBi slopes are vLLM's 2^(-8 (h + 1) / Hq).
  int32_t sliding_window = 0;
  float soft_cap = 0.0f;
  bool alibi = false;
  AttentionPrecision precision = AttentionPrecision::kExact;
};

class Fixture {
 public:
  explicit Fixture(const Case& c, uint32_t seed = 1) : case_(c), rng_(seed) {
    CacheConfig config;
    config.num_layers = 2;
    config.num_kv_heads = c.num_kv_heads;
    config.head_dim = c.head_dim;
    config.block_size = c.block_size;
    config.dtype = c.dtype;
    int32_t max_blocks = 0, total_blocks = 0;
    for (int32_t len : c.context_lens) {
      const int32_t blocks = (len + c.block_size - 1) / c.block_size;
      max_blocks = std::max(max_blocks, blocks);
      total_blocks += blocks;
    }
    config.num_blocks = total_blocks + 3;  // spare blocks that are never referenced
    storage_ = std::make_unique<KvStorage>(config);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    if (IsQuantized(c.dtype)) {  // every slot of both layers written (quantized) by WriteTokens
      std::vector<int32_t> slots(int64_t{config.num_blocks} * c.block_size);
      std::iota(slots.begin(), slots.end(), 0);
      std::vector<float> k(slots.size() * c.num_kv_heads * c.head_dim), v(k.size());
      for (int32_t layer = 0; layer < config.num_layers; ++layer) {
        for (float& x : k) x = normal(rng_);
        for (float& x : v) x = normal(rng_);
        storage_->WriteTokens(layer, slots.data(), int64_t(slots.size()), k.data(), v.data(),
                              DType::kFloat32);
      }
    } else {
      std::vector<float> values(storage_->total_bytes() / DTypeSize(c.dtype));
      for (float& x : values) x = normal(rng_);
      ConvertFromFloat32(values.data(), c.dtype, storage_->Data(), int64_t(values.size()));
    }
    // Shuffled block ids; -1 padding after each sequence's last block.
    std::vector<int32_t> ids(config.num_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng_);
    tables_.assign(c.context_lens.size() * max_blocks, -1);
    size_t next = 0;
    for (size_t i = 0; i < c.context_lens.size(); ++i) {
      const int32_t blocks = (c.context_lens[i] + c.block_size - 1) / c.block_size;
      for (int32_t j = 0; j < blocks; ++j) tables_[i * max_blocks + j] = ids[next++];
    }
    batch_.block_tables = tables_.data();
    batch_.context_lens = case_.context_lens.data();
    batch_.query_lens = case_.query_lens.empty() ? nullptr : case_.query_lens.data();
    batch_.batch_size = static_cast<int32_t>(c.context_lens.size());
    batch_.max_blocks = max_blocks;
    rows_ = case_.query_lens.empty()
                ? int64_t(c.context_lens.size())
                : std::accumulate(case_.query_lens.begin(), case_.query_lens.end(), int64_t{0});
    // Queries of norm ~3 * sqrt(head_dim): with scale 1/sqrt(head_dim) the softmax is peaked.
    q_.resize(rows_ * num_q_heads() * c.head_dim);
    for (float& x : q_) x = 3.0f * normal(rng_);
    for (int32_t h = 0; h < num_q_heads(); ++h) {
      slopes_.push_back(std::exp2(-8.0f * float(h + 1) / float(num_q_heads())));
    }
  }

  int32_t num_q_heads() const { return case_.num_kv_heads * case_.group; }
  float scale() const { return 1.0f / std::sqrt(float(case_.head_dim)); }
  PagedBatch& batch() { return batch_; }
  std::vector<float>& q() { return q_; }
  const KvStorage& storage() const { return *storage_; }

  std::vector<float> Run(AttentionIsa isa, int32_t layer = 1, int32_t threads = 0) {
    std::vector<float> out(q_.size(), std::nanf(""));
    AttentionOptions options;
    options.isa = isa;
    options.num_threads = threads;
    options.sliding_window = case_.sliding_window;
    options.soft_cap = case_.soft_cap;
    options.alibi_slopes = case_.alibi ? slopes_.data() : nullptr;
    options.precision = case_.precision;
    if (case_.query_lens.empty()) {
      PagedAttentionDecode(q_.data(), num_q_heads(), *storage_, layer, batch_, scale(),
                           out.data(), options);
    } else {
      PagedAttentionPrefill(q_.data(), rows_, num_q_heads(), *storage_, layer, batch_, scale(),
                            out.data(), options);
    }
    return out;
  }

 private:
  Case case_;
  std::mt19937 rng_;
  std::unique_ptr<KvStorage> storage_;
  std::vector<int32_t> tables_;
  PagedBatch batch_;
  int64_t rows_ = 0;
  std::vector<float> q_;
  std::vector<float> slopes_;
};

double RelativeError(const std::vector<float>& out, const std::vector<float>& ref) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) return INFINITY;
    diff += (double(out[i]) - ref[i]) * (double(out[i]) - ref[i]);
    norm += double(ref[i]) * ref[i];
  }
  return std::sqrt(diff / norm);
}

std::vector<AttentionIsa> SupportedIsas() {
  std::vector<AttentionIsa> isas;
  for (AttentionIsa isa : {AttentionIsa::kPortable, AttentionIsa::kAvx2, AttentionIsa::kAvx512}) {
    if (AttentionIsaSupported(isa)) isas.push_back(isa);
  }
  return isas;
}

// "fast" precision (attention.h): bfloat16 queries and weights cost ~2e-3 - 6e-3 here; the
// bound is the 1.5e-2.
constexpr double kFastTolerance = 1.5e-2;

void ExpectMatchesReference(const Case& c) {
  const double tolerance =
      c.precision == AttentionPrecision::kFast ? kFastTolerance : kTolerance;
  for (int32_t threads : {1, 2, 3}) {
    Fixture f(c);
    const std::vector<float> ref = f.Run(AttentionIsa::kReference);
    for (AttentionIsa isa : SupportedIsas()) {
      EXPECT_LT(RelativeError(f.Run(isa, 1, threads), ref), tolerance)
          << AttentionIsaName(isa) << " threads=" << threads << " dtype=" << DTypeName(c.dtype)
          << " head_dim=" << c.head_dim << " block_size=" << c.block_size
          << " group=" << c.group << " window=" << c.sliding_window
          << " soft_cap=" << c.soft_cap << " alibi=" << c.alibi
          << " precision=" << AttentionPrecisionName(c.precision);
    }
  }
}

TEST(AttentionTest, DecodeMatchesReferenceOnOddShapes) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    ExpectMatchesReference({2, 4, 128, 16, dtype, {1, 17, 40, 300}, {}});
    ExpectMatchesReference({3, 3, 72, 5, dtype, {7, 64, 65, 129}, {}});   // AVX-512 tail of 8
    ExpectMatchesReference({1, 6, 36, 8, dtype, {33, 2}, {}});            // AVX2 tail of 4
    ExpectMatchesReference({1, 1, 16, 1, dtype, {1, 3}, {}});             // multi-head, block 1
    ExpectMatchesReference({2, 20, 64, 32, dtype, {50, 200}, {}});        // group > 16 rows
  }
}

TEST(AttentionTest, LongDecodeIsSplitAcrossThreadsAndMerged) {
  // One sequence and one KV head: fewer tiles than threads, so the context is split.
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    ExpectMatchesReference({1, 4, 64, 16, dtype, {3000}, {}});
    ExpectMatchesReference({1, 2, 80, 7, dtype, {1500, 513}, {}});
  }
}

TEST(AttentionTest, PrefillMatchesReferenceWithAndWithoutPrefix) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    ExpectMatchesReference({2, 4, 64, 16, dtype, {37, 20}, {37, 20}});   // no cached prefix
    ExpectMatchesReference({1, 3, 72, 5, dtype, {90, 9, 1}, {13, 9, 1}});  // prefix + chunk
    ExpectMatchesReference({2, 1, 40, 8, dtype, {700}, {3}});
  }
}

// Each optional feature alone and all together, decode and prefill (with a cached prefix),
// windows smaller than, equal to and larger than the contexts, odd shapes, split contexts.
TEST(AttentionTest, OptionalFeaturesMatchReference) {
  struct Features {
    int32_t window;
    float soft_cap;
    bool alibi;
  };
  const Features features[] = {{1, 0, false},  {7, 0, false},    {40, 0, false},
                               {300, 0, false}, {5000, 0, false}, {0, 5.0f, false},
                               {0, 50.0f, false}, {0, 0, true},   {33, 2.0f, true}};
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    for (const Features& f : features) {
      std::vector<Case> cases = {
          {2, 4, 128, 16, dtype, {1, 17, 40, 300}, {}},
          {3, 3, 72, 5, dtype, {7, 64, 65, 129}, {}},
          {1, 6, 36, 8, dtype, {33, 2}, {}},
          {1, 4, 64, 16, dtype, {3000}, {}},                 // split across threads
          {2, 4, 64, 16, dtype, {37, 20}, {37, 20}},         // prefill, no prefix
          {1, 3, 72, 5, dtype, {90, 9, 1}, {13, 9, 1}},      // prefix + chunk
          {2, 1, 40, 8, dtype, {700}, {3}},
          {1, 8, 64, 16, dtype, {200}, {64}},                // wide tiles (rows in lanes)
      };
      for (Case& c : cases) {
        c.sliding_window = f.window;
        c.soft_cap = f.soft_cap;
        c.alibi = f.alibi;
        ExpectMatchesReference(c);
      }
    }
  }
}

TEST(AttentionTest, WindowCoveringTheContextChangesNothing) {
  Case plain{2, 4, 64, 16, DType::kFloat16, {40, 77}, {40, 5}};
  Case windowed = plain;
  windowed.sliding_window = 77;
  Fixture a(plain), b(windowed);
  for (AttentionIsa isa : SupportedIsas()) EXPECT_EQ(a.Run(isa), b.Run(isa)) << AttentionIsaName(isa);
}

TEST(AttentionTest, RejectsBadOptions) {
  Fixture f({2, 2, 32, 4, DType::kFloat16, {10, 5}, {}});
  std::vector<float> out(f.q().size());
  auto decode = [&](const AttentionOptions& options) {
    PagedAttentionDecode(f.q().data(), 4, f.storage(), 0, f.batch(), 0.5f, out.data(), options);
  };
  AttentionOptions options;
  options.sliding_window = -1;
  EXPECT_THROW(decode(options), InvalidArgument);
  options = {};
  options.soft_cap = -1.0f;
  EXPECT_THROW(decode(options), InvalidArgument);
  options.soft_cap = INFINITY;
  EXPECT_THROW(decode(options), InvalidArgument);
  options = {};
  const float slopes[] = {0.5f, NAN, 0.1f, 0.2f};
  options.alibi_slopes = slopes;
  EXPECT_THROW(decode(options), InvalidArgument);
}

TEST(AttentionTest, WritesOnlyOutAndLeavesQAlone) {
  Fixture f({1, 4, 64, 16, DType::kFloat32, {100}, {}});
  const std::vector<float> q_before = f.q();
  f.Run(AttentionIsa::kAuto);
  EXPECT_EQ(f.q(), q_before);
}

TEST(AttentionTest, RejectsBadArguments) {
  Fixture f({2, 2, 32, 4, DType::kFloat16, {10, 5}, {}});
  std::vector<float> out(f.q().size());
  auto decode = [&](int32_t q_heads, int32_t layer) {
    PagedAttentionDecode(f.q().data(), q_heads, f.storage(), layer, f.batch(), 0.5f, out.data());
  };
  EXPECT_THROW(decode(4, 2), IndexOutOfRange);
  EXPECT_THROW(decode(4, -1), IndexOutOfRange);
  EXPECT_THROW(decode(3, 0), InvalidArgument);  // not a multiple of 2 KV heads
  EXPECT_THROW(PagedAttentionDecode(f.q().data(), 4, f.storage(), 0, f.batch(), NAN, out.data()),
               InvalidArgument);
  EXPECT_THROW(PagedAttentionDecode(f.q().data(), 4, f.storage(), 0, f.batch(), 1.0f,
                                    f.q().data()),
               InvalidArgument);  // out aliases q

  PagedBatch& batch = f.batch();
  auto* tables = const_cast<int32_t*>(batch.block_tables);
  auto* lens = const_cast<int32_t*>(batch.context_lens);
  const int32_t saved_block = tables[1];
  tables[1] = f.storage().num_blocks();  // a block the first sequence reads
  EXPECT_THROW(decode(4, 0), InvalidArgument);
  tables[1] = -1;
  EXPECT_THROW(decode(4, 0), InvalidArgument);
  tables[1] = saved_block;
  lens[1] = 0;
  EXPECT_THROW(decode(4, 0), InvalidArgument);
  lens[1] = batch.max_blocks * 4 + 1;  // more tokens than the table row can hold
  EXPECT_THROW(decode(4, 0), InvalidArgument);
  lens[1] = 5;
  EXPECT_NO_THROW(decode(4, 0));  // padding (-1) after the last used block is never read

  const int32_t query_lens[] = {3, 6};  // 6 > context_lens[1] = 5
  batch.query_lens = query_lens;
  EXPECT_THROW(PagedAttentionPrefill(f.q().data(), 9, 4, f.storage(), 0, batch, 1.0f, out.data()),
               InvalidArgument);
  const int32_t good_lens[] = {1, 1};
  batch.query_lens = good_lens;
  EXPECT_THROW(PagedAttentionPrefill(f.q().data(), 3, 4, f.storage(), 0, batch, 1.0f, out.data()),
               InvalidArgument);  // sum(query_lens) = 2 rows, not 3
  EXPECT_THROW(decode(4, 0), InvalidArgument);  // decode with query_lens
}

// Quantized storage, exact precision: against the oracle on the dequantized rows (kv_format.h),
// decode and prefill, odd head_dims (int4's last group shorter than 32), split contexts, options.
TEST(AttentionTest, QuantizedFormatsMatchReference) {
  for (DType dtype : {DType::kInt8, DType::kFp8E4M3, DType::kFp8E5M2, DType::kInt4}) {
    ExpectMatchesReference({2, 4, 128, 16, dtype, {1, 17, 40, 300}, {}});
    ExpectMatchesReference({3, 3, 72, 5, dtype, {7, 64, 65, 129}, {}});
    ExpectMatchesReference({1, 6, 36, 8, dtype, {33, 2}, {}});
    ExpectMatchesReference({1, 4, 80, 16, dtype, {1500}, {}});
    ExpectMatchesReference({1, 3, 72, 5, dtype, {90, 9, 1}, {13, 9, 1}});
    ExpectMatchesReference({2, 8, 96, 16, dtype, {120, 40}, {120, 40}});
    ExpectMatchesReference({2, 4, 96, 8, dtype, {200, 31}, {}, 20, 3.0f, true});
    ExpectMatchesReference({2, 8, 64, 16, dtype, {120, 40}, {50, 40}, 20, 3.0f, true});
  }
}

// Fast precision on every variant (those without a fast kernel run the exact one), decode and
// prefill, odd head_dims, split contexts and the optional features.
TEST(AttentionTest, FastPrecisionMatchesReference) {
  const auto fast = AttentionPrecision::kFast;
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt8,
                      DType::kFp8E4M3, DType::kFp8E5M2, DType::kInt4}) {
    ExpectMatchesReference({2, 4, 128, 16, dtype, {1, 17, 40, 300}, {}, 0, 0.0f, false, fast});
    ExpectMatchesReference({3, 3, 72, 5, dtype, {7, 64, 65, 129}, {}, 0, 0.0f, false, fast});
    ExpectMatchesReference({1, 4, 80, 16, dtype, {3000}, {}, 0, 0.0f, false, fast});
    ExpectMatchesReference({1, 3, 72, 5, dtype, {90, 9, 1}, {13, 9, 1}, 0, 0.0f, false, fast});
    ExpectMatchesReference({2, 4, 96, 8, dtype, {200, 31}, {}, 20, 3.0f, true, fast});
    ExpectMatchesReference({2, 8, 64, 16, dtype, {120, 40}, {50, 40}, 20, 3.0f, true, fast});
  }
}

TEST(AttentionTest, FastKernelRunsOnlyWhereSupported) {
  // Without a fast kernel, kFast is the exact code bit for bit; with one, the result differs.
  for (DType dtype :
       {DType::kBFloat16, DType::kInt8, DType::kFp8E4M3, DType::kFp8E5M2, DType::kInt4}) {
    for (AttentionIsa isa : SupportedIsas()) {
      Case exact_case{2, 4, 128, 16, dtype, {100, 33}, {}};
      Case fast_case = exact_case;
      fast_case.precision = AttentionPrecision::kFast;
      const std::vector<float> exact = Fixture(exact_case).Run(isa);
      const std::vector<float> fast = Fixture(fast_case).Run(isa);
      EXPECT_EQ(exact == fast, !AttentionFastSupported(isa, dtype))
          << AttentionIsaName(isa) << " " << DTypeName(dtype);
    }
  }
  EXPECT_FALSE(AttentionFastSupported(AttentionIsa::kPortable, DType::kBFloat16));
  EXPECT_FALSE(AttentionFastSupported(AttentionIsa::kAvx512, DType::kFloat32));
  EXPECT_FALSE(AttentionFastSupported(AttentionIsa::kAvx2, DType::kFp8E4M3));
  EXPECT_FALSE(AttentionFastSupported(AttentionIsa::kAvx512, DType::kInt4));
}

TEST(AttentionTest, PrecisionNamesRoundTrip) {
  for (AttentionPrecision precision : {AttentionPrecision::kExact, AttentionPrecision::kFast}) {
    EXPECT_EQ(ParseAttentionPrecision(AttentionPrecisionName(precision)), precision);
  }
  EXPECT_THROW(ParseAttentionPrecision("Fast"), InvalidArgument);
  EXPECT_THROW(ParseAttentionPrecision(""), InvalidArgument);
  Case c{1, 1, 16, 4, DType::kBFloat16, {3}, {}};
  c.precision = static_cast<AttentionPrecision>(7);
  Fixture f(c);
  EXPECT_THROW(f.Run(AttentionIsa::kAuto), InvalidArgument);
}

TEST(AttentionTest, IsaNamesRoundTrip) {
  for (AttentionIsa isa : {AttentionIsa::kAuto, AttentionIsa::kReference, AttentionIsa::kPortable,
                           AttentionIsa::kAvx2, AttentionIsa::kAvx512}) {
    EXPECT_EQ(ParseAttentionIsa(AttentionIsaName(isa)), isa);
  }
  EXPECT_THROW(ParseAttentionIsa("sse9"), InvalidArgument);
  EXPECT_NE(BestAttentionIsa(), AttentionIsa::kAuto);
  EXPECT_TRUE(AttentionIsaSupported(BestAttentionIsa()));
}

}  // namespace
}  // namespace ferrum_kv
