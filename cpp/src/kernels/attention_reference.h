// The scalar oracle of the paged-attention kernels (internal): the definition in attention.h
// computed the obvious way, one query row and one head at a time, scores and softmax in float64,
// two passes. Slow; attention.cc runs it for AttentionIsa::kReference after the same validation
// as the fast paths, and the tests compare every SIMD variant against it.
#pragma once

#include <cstdint>

#include "ferrum_kv/attention.h"
#include "ferrum_kv/kv_storage.h"

namespace ferrum_kv::kernels {

// Arguments as PagedAttentionPrefill's (already validated); batch.query_lens == nullptr means one
// query row per sequence (decode). Honours options' sliding_window, soft_cap and alibi_slopes.
void PagedAttentionReference(const float* q, int32_t num_q_heads, const KvStorage& storage,
                             int32_t layer, const PagedBatch& batch, float scale, float* out,
                             const AttentionOptions& options = {});

}  // namespace ferrum_kv::kernels
