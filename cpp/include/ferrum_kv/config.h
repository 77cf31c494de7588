// CacheConfig: the geometry of a paged KV cache and the knobs of its manager.
//
// A block holds block_size tokens of K and V for every layer and KV head: num_layers * 2 *
// num_kv_heads head regions of HeadRegionBytes() each (kv_format.h): block_size * head_dim *
// DTypeSize(dtype) for the float dtypes, codes + per-row parameters + padding for the quantized
// ones.
//
// Watermarks are fractions of the device blocks that are free: memory pressure is "high" when the
// free fraction is below high_watermark and "critical" below critical_watermark.
#pragma once

#include <cstdint>

#include "ferrum_kv/eviction_policy.h"
#include "ferrum_kv/types.h"

namespace ferrum_kv {

struct CacheConfig {
  int32_t num_layers = 1;
  int32_t num_kv_heads = 1;
  int32_t head_dim = 64;
  int32_t block_size = 16;
  int32_t num_blocks = 256;
  DType dtype = DType::kFloat32;
  int32_t num_host_blocks = 0;
  bool enable_prefix_caching = false;
  // Log CacheEvents (stored / removed / cleared, named by SHA-256 chain hashes) for an external
  // router; needs enable_prefix_caching. Off by default: it costs a SHA-256 per published block.
  bool enable_kv_events = false;
  // Whole-prompt hits: how many prompts' last-token logits the cache keeps (store_logits), each
  // with a copy of the prompt's partly filled last block; 0 turns them off. Needs
  // enable_prefix_caching.
  int32_t max_prompt_logits = 0;
  EvictionPolicyKind eviction_policy = EvictionPolicyKind::kLru;
  double high_watermark = 0.10;
  double critical_watermark = 0.02;

  // Throws InvalidArgument naming the offending field and value; checks that one block's size
  // and the whole arena's size fit in int64.
  void Validate() const;

  // Elements (not bytes) of one token's K (or V) for one layer: num_kv_heads * head_dim.
  int64_t ElementsPerTokenPerLayer() const { return int64_t{num_kv_heads} * head_dim; }
  // Elements of one block (all layers, K and V).
  int64_t ElementsPerBlock() const {
    return int64_t{num_layers} * 2 * num_kv_heads * block_size * head_dim;
  }
  // Bytes of one head region ([block_size] rows of one layer, K or V, KV head; kv_format.h).
  int64_t HeadRegionBytes() const;
  // Bytes of one block: num_layers * 2 * num_kv_heads * HeadRegionBytes().
  int64_t BytesPerBlock() const {
    return int64_t{num_layers} * 2 * num_kv_heads * HeadRegionBytes();
  }
  // BytesPerBlock() / block_size: what one token costs, padding and parameters included (not an
  // integer when the padding does not divide evenly).
  double BytesPerToken() const { return double(BytesPerBlock()) / block_size; }
};

}  // namespace ferrum_kv
