// The SHA-256 chain in C++ alone (no Python): HashBlocks over a 32K-token prompt against a bare
// loop of the same number of compressions (two dependent 64-byte compressions per 16-token
// block, what one chain cannot go below), and the prefix cache's key chains (prefix_key.h) in
// either scheme over the same prompt, as one chain, as 16 and as one chain per block. Build: cmake
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

const char* SchemeName(PrefixKeyer::Scheme scheme) {
  return scheme == PrefixKeyer::Scheme::kAes ? "AES-NI CBC-MAC" : "SipHash-2-4-128";
}

// The schemes this CPU can run: range(0) indexes them.
std::vector<PrefixKeyer::Scheme> Schemes() {
  std::vector<PrefixKeyer::Scheme> schemes = {PrefixKeyer::Scheme::kSipHash};
  if (PrefixKeyer::DefaultScheme() == PrefixKeyer::Scheme::kAes) {
    schemes.push_back(PrefixKeyer::Scheme::kAes);
  }
  return schemes;
}

void SchemeArgs(benchmark::internal::Benchmark* b) {
  for (size_t i = 0; i < Schemes().size(); ++i) b->Arg(int64_t(i));
}

// Each scheme with 16 chains and with one chain per block.
void SchemeAndChainArgs(benchmark::internal::Benchmark* b) {
  for (size_t i = 0; i < Schemes().size(); ++i) {
    for (int64_t chains : {int64_t{16}, kNumBlocks}) b->Args({int64_t(i), chains});
  }
}

void BM_PrefixKeyChain(benchmark::State& state) {
  std::mt19937 rng(0);
  std::vector<int32_t> tokens(kNumTokens);
  for (int32_t& token : tokens) token = int32_t(rng() % 150000);
  std::vector<PrefixKey> out(kNumBlocks);
  const PrefixKeyer::Scheme scheme = Schemes()[size_t(state.range(0))];
  const PrefixKeyer keyer(rng(), rng(), scheme);
  const PrefixKey root = keyer.Root("");
  for (auto _ : state) {
    keyer.Chain(root, tokens.data(), kNumBlocks, kBlockSize, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * kNumTokens);
  state.SetLabel(SchemeName(scheme));
}
BENCHMARK(BM_PrefixKeyChain)->Apply(SchemeArgs);

// The same tokens as independent chains: range(1) chains of kNumBlocks / range(1) blocks (16:
// 16 prompts published together; 2048: one block each, as a decode step publishes them).
void BM_PrefixKeyChainMany(benchmark::State& state) {
  const int64_t chains = state.range(1);
  std::mt19937 rng(0);
  std::vector<int32_t> tokens(kNumTokens);
  for (int32_t& token : tokens) token = int32_t(rng() % 150000);
  std::vector<PrefixKey> out(kNumBlocks);
  const PrefixKeyer::Scheme scheme = Schemes()[size_t(state.range(0))];
  const PrefixKeyer keyer(rng(), rng(), scheme);
  std::vector<KeyChainJob> jobs;
  for (int64_t c = 0; c < chains; ++c) {
    const int64_t blocks = kNumBlocks / chains;
    jobs.push_back(KeyChainJob{keyer.Root(""), tokens.data() + c * blocks * kBlockSize, blocks,
                               out.data() + c * blocks});
  }
  for (auto _ : state) {
    keyer.ChainMany(jobs.data(), chains, kBlockSize);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * kNumTokens);
  state.SetLabel(SchemeName(scheme));
}
BENCHMARK(BM_PrefixKeyChainMany)->Apply(SchemeAndChainArgs);

}  // namespace
}  // namespace ferrum_kv
