// The SHA-256 chain in C++ alone (no Python): HashBlocks over a 32K-token prompt against a bare
// loop of the same number of compressions (two dependent 64-byte compressions per 16-token
// block, what one chain cannot go below), and the prefix cache's SipHash key chain
// (prefix_key.h) over the same prompt, as one chain and as 16. Build: cmake
// -DFKV_BUILD_BENCH=ON (libbenchmark-dev), run build/<dir>/block_hash_bench.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "ferrum_kv/block_hash.h"
#include "ferrum_kv/prefix_key.h"
#include "sha256.h"

namespace ferrum_kv {
namespace {

constexpr int32_t kBlockSize = 16;
constexpr int64_t kNumTokens = 32768;
constexpr int64_t kNumBlocks = kNumTokens / kBlockSize;

void BM_HashBlocks(benchmark::State& state) {
  std::mt19937 rng(0);
  std::vector<int32_t> tokens(kNumTokens);
  for (int32_t& token : tokens) token = int32_t(rng() % 150000);
  std::vector<BlockHash> out(kNumBlocks);
  const BlockHash root = RootHash(nullptr, 0);
  for (auto _ : state) {
    HashBlocks(root, tokens.data(), kNumBlocks, kBlockSize, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * kNumTokens);
  state.SetLabel(Sha256Implementation());
}
BENCHMARK(BM_HashBlocks);

// Two dependent compressions per block, chained through the state: the latency floor.
void BM_BareCompressions(benchmark::State& state) {
  const sha256::CompressFn compress = sha256::BestCompress();
  uint8_t message[2 * sha256::kBlockBytes] = {1, 2, 3};
  for (auto _ : state) {
    sha256::State chain = sha256::kInitialState;
    for (int64_t i = 0; i < kNumBlocks; ++i) {
      compress(&chain, message, 2);
      message[0] = uint8_t(chain.h[0]);  // the next message depends on this result
    }
    benchmark::DoNotOptimize(chain);
  }
  state.SetItemsProcessed(state.iterations() * kNumTokens);
  state.SetLabel(sha256::BestCompressName());
}
BENCHMARK(BM_BareCompressions);

void BM_PrefixKeyChain(benchmark::State& state) {
  std::mt19937 rng(0);
  std::vector<int32_t> tokens(kNumTokens);
  for (int32_t& token : tokens) token = int32_t(rng() % 150000);
  std::vector<PrefixKey> out(kNumBlocks);
  const PrefixKeyer keyer;
  const PrefixKey root = keyer.Root("");
  for (auto _ : state) {
    keyer.Chain(root, tokens.data(), kNumBlocks, kBlockSize, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * kNumTokens);
  state.SetLabel("SipHash-2-4-128");
}
BENCHMARK(BM_PrefixKeyChain);

// The same tokens as 16 independent chains of 2K tokens (16 prompts published together).
void BM_PrefixKeyChainMany(benchmark::State& state) {
  constexpr int kChains = 16;
  std::mt19937 rng(0);
  std::vector<int32_t> tokens(kNumTokens);
  for (int32_t& token : tokens) token = int32_t(rng() % 150000);
  std::vector<PrefixKey> out(kNumBlocks);
  const PrefixKeyer keyer;
  std::vector<KeyChainJob> jobs;
  for (int c = 0; c < kChains; ++c) {
    const int64_t blocks = kNumBlocks / kChains;
    jobs.push_back(KeyChainJob{keyer.Root(""), tokens.data() + c * blocks * kBlockSize, blocks,
                               out.data() + c * blocks});
  }
  for (auto _ : state) {
    keyer.ChainMany(jobs.data(), kChains, kBlockSize);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * kNumTokens);
  state.SetLabel("SipHash-2-4-128, 16 chains");
}
BENCHMARK(BM_PrefixKeyChainMany);

}  // namespace
}  // namespace ferrum_kv
