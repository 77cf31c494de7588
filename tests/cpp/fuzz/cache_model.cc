#include "fuzz/cache_model.h"

#include <sstream>
#include <stdexcept>

#include "ferrum_kv/dtype_convert.h"
#include "ferrum_kv/kv_format.h"

namespace ferrum_kv::fuzz {

namespace {

uint64_t Mix(uint64_t x) {  // splitmix64's finalizer
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t Extend(uint64_t hash, int32_t token) { return Mix(hash ^ uint64_t(uint32_t(token))); }

[[noreturn]] void Mismatch(SeqId seq_id, const std::string& what) {
  std::ostringstream message;
  message << "sequence " << seq_id << ": " << what;
  throw std::logic_error(message.str());
}

}  // namespace

uint64_t PrefixHash(const int32_t* tokens, int64_t n) {
  uint64_t hash = 0x5EED;
  for (int64_t i = 0; i < n; ++i) hash = Extend(hash, tokens[i]);
  return hash;
}

float KvValue(uint64_t prefix_hash, int32_t layer, int32_t kv, int64_t element) {
  const uint64_t x = Mix(prefix_hash ^ Mix(uint64_t(layer) << 40 ^ uint64_t(kv) << 32 ^
                                           uint64_t(element)));
  return float(int64_t(x % 201) - 100);
}

std::vector<float> PromptLogitsFor(const std::string& namespace_id,
                                   const std::vector<int32_t>& tokens, int64_t vocab_size) {
  uint64_t hash = PrefixHash(tokens.data(), int64_t(tokens.size()));
  for (char c : namespace_id) hash = Extend(hash, c);
  std::vector<float> logits(static_cast<size_t>(vocab_size));
  for (int64_t i = 0; i < vocab_size; ++i) logits[size_t(i)] = float(Mix(hash + i) % 1000) / 8;
  return logits;
}

void ExpectedKv(const CacheConfig& config, const std::vector<int32_t>& tokens, int64_t start,
                int64_t end, int32_t layer, std::vector<float>* k, std::vector<float>* v) {
  const int64_t per_token = config.ElementsPerTokenPerLayer();
  k->resize(size_t((end - start) * per_token));
  v->resize(k->size());
  uint64_t hash = PrefixHash(tokens.data(), start);
  for (int64_t pos = start; pos < end; ++pos) {
    hash = Extend(hash, tokens[size_t(pos)]);
    for (int64_t e = 0; e < per_token; ++e) {
      (*k)[size_t((pos - start) * per_token + e)] = KvValue(hash, layer, 0, e);
      (*v)[size_t((pos - start) * per_token + e)] = KvValue(hash, layer, 1, e);
    }
  }
}

namespace {

// Each head_dim row of values replaced by what quantized storage keeps of it.
void RoundRowsToStorage(const CacheConfig& config, std::vector<float>* values) {
  const HeadRegionLayout layout = HeadRegion(config.dtype, config.head_dim, 1);
  std::vector<uint8_t> codes(size_t(layout.row_code_bytes));
  std::vector<float> params(size_t(layout.params_per_row));
  for (size_t row = 0; row < values->size(); row += size_t(config.head_dim)) {
    float* x = values->data() + row;
    QuantizeRow(config.dtype, x, config.head_dim, codes.data(), params.data());
    DequantizeRow(config.dtype, codes.data(), params.data(), config.head_dim, x);
  }
}

}  // namespace

void CheckSequence(const PagedKvCache& cache, SeqId seq_id, const ModelSequence& seq) {
  const CacheConfig& config = cache.config();
  if (!cache.Contains(seq_id)) Mismatch(seq_id, "missing from the cache");
  if (cache.Tokens(seq_id) != seq.tokens) Mismatch(seq_id, "tokens differ");
  if (cache.IsSwapped(seq_id) != seq.swapped) Mismatch(seq_id, "swapped state differs");
  const int64_t n = int64_t(seq.tokens.size());
  if (int64_t(cache.BlockTable(seq_id).size()) != BlocksForTokens(n, config.block_size)) {
    Mismatch(seq_id, "block table length differs");
  }
  const int64_t per_token = config.ElementsPerTokenPerLayer();
  std::vector<uint8_t> k_bytes, v_bytes;
  std::vector<float> k(size_t(n * per_token)), v(k.size()), want_k, want_v;
  for (int32_t layer = 0; layer < config.num_layers; ++layer) {
    if (cache.GatherKv(seq_id, layer, &k_bytes, &v_bytes) != n) {
      Mismatch(seq_id, "GatherKv token count differs");
    }
    // Quantized storage reads back dequantized float32.
    const DType read_dtype = IsQuantized(config.dtype) ? DType::kFloat32 : config.dtype;
    ConvertToFloat32(k_bytes.data(), read_dtype, k.data(), n * per_token);
    ConvertToFloat32(v_bytes.data(), read_dtype, v.data(), n * per_token);
    ExpectedKv(config, seq.tokens, 0, seq.written, layer, &want_k, &want_v);
    if (IsQuantized(config.dtype)) {  // what the scalar definition (kv_format.h) keeps of a row
      RoundRowsToStorage(config, &want_k);
      RoundRowsToStorage(config, &want_v);
    }
    for (size_t i = 0; i < want_k.size(); ++i) {
      if (k[i] != want_k[i] || v[i] != want_v[i]) {
        std::ostringstream what;
        what << "layer " << layer << " position " << int64_t(i) / per_token << " element "
             << int64_t(i) % per_token << ": K/V " << k[i] << "/" << v[i] << ", want "
             << want_k[i] << "/" << want_v[i] << " (" << seq.written << " of " << n
             << " positions known, swapped " << seq.swapped << ")";
        Mismatch(seq_id, what.str());
      }
    }
  }
}

}  // namespace ferrum_kv::fuzz
