// The cost of quantizing on write: KvStorage::WriteTokens from float32 K/V into a quantized
// storage against the same call into bfloat16 storage (float32 rounded to bfloat16: our
// baseline write), on the same slots and data. Each iteration times one call of each, in
// alternating order (drift on a shared machine hits both alike); the counters are the medians
// (ns per call) and their ratio, quantized / bfloat16 (the time column includes both calls: read
// the counters). The target: ratio <= 1.5.
//
// Cases: a decode step (256 sequences, one token each, scattered over blocks) and a prefill chunk
// (512 contiguous tokens), 8 KV heads x head_dim 128 (a Llama-3-8B layer), float32 input; the
// quantized dtype is range(0) = 0 int8, 1 fp8_e4m3, 2 fp8_e5m2, 3 int4.
// Build: cmake -DFKV_BUILD_BENCH=ON (libbenchmark-dev), run build/<dir>/quantize_write_bench.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <vector>

#include "alternating_timer.h"
#include "ferrum_kv/kv_storage.h"

namespace ferrum_kv {
namespace {

constexpr DType kQuantized[] = {DType::kInt8, DType::kFp8E4M3, DType::kFp8E5M2, DType::kInt4};

CacheConfig Config(DType dtype) {
  CacheConfig config;
  config.num_layers = 1;
  config.num_kv_heads = 8;
  config.head_dim = 128;
  config.block_size = 16;
  config.num_blocks = 1024;
  config.dtype = dtype;
  return config;
}

// range(0): quantized dtype; range(1): 0 = decode step of 256 sequences, 1 = a 512-token chunk.
void BM_QuantizedWrite(benchmark::State& state) {
  const DType dtype = kQuantized[state.range(0)];
  const bool decode = state.range(1) == 0;
  KvStorage baseline(Config(DType::kBFloat16));
  KvStorage quantized(Config(dtype));
  std::vector<int32_t> slots;
  for (int32_t i = 0; i < (decode ? 256 : 512); ++i) {
    slots.push_back(decode ? i * 4 * 16 % (1024 * 16) + 7 + i / 256 : 100 * 16 + i);
  }
  const int64_t n = int64_t(slots.size());
  const size_t elements = size_t(n) * 8 * 128;
  std::vector<float> k(elements), v(elements);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (size_t i = 0; i < elements; ++i) {
    k[i] = normal(rng);
    v[i] = normal(rng);
  }
  const auto [quant, base] = bench::AlternatingMedians(
      state,
      [&] { quantized.WriteTokens(0, slots.data(), n, k.data(), v.data(), DType::kFloat32); },
      [&] { baseline.WriteTokens(0, slots.data(), n, k.data(), v.data(), DType::kFloat32); });
  state.SetLabel(DTypeName(dtype) + (decode ? " decode256" : " chunk512"));
  state.counters["bf16_ns"] = base;
  state.counters["quantized_ns"] = quant;
  state.counters["ratio"] = quant / base;
}
BENCHMARK(BM_QuantizedWrite)->ArgsProduct({{0, 1, 2, 3}, {0, 1}})->MinTime(1.0);

}  // namespace
}  // namespace ferrum_kv
