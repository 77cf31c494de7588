// The memory floor of paged decode's access pattern: what a decode tile's reads cost with no
// attention arithmetic. Each iteration walks 8 sequences x 8 KV heads x 4,096 keys in blocks of
// 16 (the tables take the arena's blocks in a shuffled order and move on every iteration, as
// bench_attention's rotating setups do), reading one 8-byte word per cache line of each span's
// K rows and then its V rows, and prefetching (prefetcht1) the next span's K lines while the K
// rows are read and its V lines while the V rows are, as the kernels' NextSpan does; optionally
// `fmas` independent zmm FMAs per key and pass stand in for the arithmetic.
// Counter s_per_key: seconds per (key, KV head).
// Args: row bytes per key and head of K (and of V): 256 = bfloat16 at head_dim 128, 128 = a
// 1-byte format; parameter bytes per row (4: an fp8 scale); fmas; arena MiB (768: from memory,
// 2: in the caches). AVX-512 only (the stand-in FMAs).
// Build: cmake -DFKV_BUILD_BENCH=ON (libbenchmark-dev), run build/<dir>/decode_memory_floor_bench.
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

namespace {

constexpr int kHeads = 8, kBlock = 16, kBatch = 8, kContext = 4096;
constexpr int kBlocksPerSeq = kContext / kBlock;

struct Arena {
  uint8_t* data = nullptr;
  int64_t region = 0;       // one head's K (or V) rows and parameters in a block
  int64_t block_bytes = 0;  // K and V of every head
  std::vector<int64_t> order;

  Arena(int row_bytes, int param_bytes, int64_t mib) {
    region = int64_t{kBlock} * (row_bytes + param_bytes);
    block_bytes = 2 * kHeads * region;
    const int64_t total = mib << 20;
    data = static_cast<uint8_t*>(std::aligned_alloc(2 << 20, total));
    madvise(data, total, MADV_HUGEPAGE);
    std::memset(data, 1, total);
    order.resize(std::max<int64_t>(total / block_bytes, 1));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937(1));
  }
  ~Arena() { std::free(data); }
};

// Adds one word of every line of the n bytes at p to sum.
inline void ReadRows(const uint8_t* p, int64_t n, uint64_t& sum) {
  for (int64_t o = 0; o < n; o += 64) sum += *reinterpret_cast<const uint64_t*>(p + o);
}

__attribute__((target("avx512f"))) void BM_DecodeMemoryFloor(benchmark::State& state) {
  if (!__builtin_cpu_supports("avx512f")) return state.SkipWithError("needs AVX-512");
  const int row_bytes = static_cast<int>(state.range(0));
  const int param_bytes = static_cast<int>(state.range(1));
  const int fmas = static_cast<int>(state.range(2));
  Arena arena(row_bytes, param_bytes, state.range(3));
  const int64_t num_blocks = static_cast<int64_t>(arena.order.size());
  std::vector<int64_t> table(kBatch * kBlocksPerSeq);
  int64_t next_block = 0;
  __m512d chains[8];
  for (auto& c : chains) c = _mm512_set1_pd(1.0);
  const __m512d factor = _mm512_set1_pd(0.999999);
  uint64_t sum = 0;
  for (auto _ : state) {
    for (auto& b : table) b = arena.order[next_block++ % num_blocks];
    for (int s = 0; s < kBatch; ++s) {
      for (int h = 0; h < kHeads; ++h) {
        for (int b = 0; b < kBlocksPerSeq; ++b) {
          const uint8_t* k = arena.data + table[s * kBlocksPerSeq + b] * arena.block_bytes +
                             h * arena.region;
          const uint8_t* next_k =
              b + 1 < kBlocksPerSeq
                  ? arena.data + table[s * kBlocksPerSeq + b + 1] * arena.block_bytes +
                        h * arena.region
                  : nullptr;
          for (int pass = 0; pass < 2; ++pass) {  // K rows, then V rows (kHeads regions on)
            const uint8_t* rows = k + pass * kHeads * arena.region;
            const uint8_t* next = next_k ? next_k + pass * kHeads * arena.region : nullptr;
            int64_t issued = 0;
            for (int j = 0; j < kBlock; ++j) {
              ReadRows(rows + int64_t{j} * row_bytes, row_bytes, sum);
              for (int w = 0; w < fmas; w += 8) {
                for (auto& c : chains) c = _mm512_fmadd_pd(c, factor, c);
              }
              for (; next && issued < arena.region * (j + 1) / kBlock; issued += 64) {
                __builtin_prefetch(next + issued, 0, 2);
              }
            }
            if (param_bytes) ReadRows(rows + int64_t{kBlock} * row_bytes, 8, sum);
          }
        }
      }
    }
  }
  __m512d all = chains[0];
  for (const auto& c : chains) all = _mm512_add_pd(all, c);
  benchmark::DoNotOptimize(sum);
  benchmark::DoNotOptimize(all);
  state.counters["s_per_key"] = benchmark::Counter(
      double(kBatch) * kHeads * kContext,
      benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_DecodeMemoryFloor)
    ->ArgsProduct({{256}, {0}, {0, 32, 48, 64}, {768, 2}})
    ->ArgsProduct({{128}, {4}, {0, 32, 48, 64}, {768, 2}})
    ->Unit(benchmark::kMillisecond);

}  // namespace
