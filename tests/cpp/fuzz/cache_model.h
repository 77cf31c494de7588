// CacheModel: what a PagedKvCache must hold, for the random operation driver (cache_fuzzer.h).
//
// Per sequence: its token ids, whether it is swapped out, how many leading tokens the cache must
// count as computed, and how many leading positions have known K/V. K/V is a function of the
// token prefix (KvValue): an engine computes the same K/V for the same prefix, so every block that
// the cache may share (fork, prefix hits, whole-prompt hits) holds the same values whoever wrote
// them, and a wrong share, a missed copy-on-write or a lost swap shows up as a wrong value. The
// values are small integers, exact in float32, float16 and bfloat16.
//
// The model does not predict which prefix hits the cache finds (eviction decides); it checks what
// the cache reports (CheckSequence) against what it must hold.
// Thread safety: thread-compatible; one model per driver.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ferrum_kv/cache_manager.h"

namespace ferrum_kv::fuzz {

struct ModelSequence {
  std::vector<int32_t> tokens;
  std::string namespace_id;
  bool swapped = false;
  int64_t computed = 0;  // the cache's num_computed: only positions < written are ever marked
  int64_t written = 0;   // K/V of positions [0, written) is KvValue of their prefix
};

// Hash of tokens[0..n) (the prefix a position's K/V depends on).
uint64_t PrefixHash(const int32_t* tokens, int64_t n);
// The value of element `element` of the K (kv 0) or V (kv 1) of a token whose prefix (itself
// included) hashes to prefix_hash, in layer `layer`: an integer in [-100, 100].
float KvValue(uint64_t prefix_hash, int32_t layer, int32_t kv, int64_t element);
// What follows a prompt: the logits StoreLogits keeps (a function of the prompt, so any sequence
// that stores the same prompt stores the same logits).
std::vector<float> PromptLogitsFor(const std::string& namespace_id,
                                   const std::vector<int32_t>& tokens, int64_t vocab_size);

// Throws std::logic_error (message names seq_id and what differs) unless the cache holds seq as
// the model says: tokens, swapped state, block count, and the K/V of every known position of
// every layer (GatherKv, converted from the storage dtype).
void CheckSequence(const PagedKvCache& cache, SeqId seq_id, const ModelSequence& seq);

// The K and V ([n][num_kv_heads * head_dim] float32 each, n = end - start) of positions
// [start, end) of tokens in layer, as KvValue gives them.
void ExpectedKv(const CacheConfig& config, const std::vector<int32_t>& tokens, int64_t start,
                int64_t end, int32_t layer, std::vector<float>* k, std::vector<float>* v);

}  // namespace ferrum_kv::fuzz
