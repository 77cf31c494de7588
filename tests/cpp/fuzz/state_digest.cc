#include "fuzz/state_digest.h"

namespace ferrum_kv::fuzz {

namespace {

// FNV-1a over bytes.
class Hasher {
 public:
  void Bytes(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < n; ++i) hash_ = (hash_ ^ p[i]) * 0x100000001B3ull;
  }
  template <typename T>
  void Value(const T& value) {
    Bytes(&value, sizeof(value));
  }
  template <typename T>
  void Vector(const std::vector<T>& values) {
    Value(values.size());
    Bytes(values.data(), values.size() * sizeof(T));
  }
  uint64_t hash() const { return hash_; }

 private:
  uint64_t hash_ = 0xCBF29CE484222325ull;
};

}  // namespace

uint64_t StateDigest(const PagedKvCache& cache, const std::vector<SeqId>& seq_ids) {
  Hasher h;
  std::vector<uint8_t> k, v;
  for (SeqId id : seq_ids) {
    h.Value(id);
    const bool held = cache.Contains(id);
    h.Value(held);
    if (!held) continue;
    h.Value(cache.IsSwapped(id));
    h.Vector(cache.Tokens(id));
    h.Vector(cache.BlockTable(id));
    for (int32_t layer = 0; layer < cache.config().num_layers; ++layer) {
      cache.GatherKv(id, layer, &k, &v);
      h.Vector(k);
      h.Vector(v);
    }
  }
  CacheStats s = cache.Stats();
  s.allocation_failures = 0;
  for (int64_t field :
       {s.num_blocks, s.free_blocks, s.used_blocks, s.num_host_blocks, s.free_host_blocks,
        s.num_sequences, s.num_swapped_sequences, s.blocks_allocated, s.cow_copies, s.swap_outs,
        s.swap_ins, s.blocks_swapped_out, s.blocks_swapped_in, s.bytes_used, s.bytes_total,
        s.cached_blocks, s.evictable_blocks, s.prefix_query_tokens, s.prefix_hit_tokens,
        s.evictions, s.events_dropped, s.prompt_logits, s.prompt_logits_hits}) {
    h.Value(field);
  }
  h.Value(cache.MemoryPressure());
  return h.hash();
}

}  // namespace ferrum_kv::fuzz
