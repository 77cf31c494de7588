// KvStorage: the K/V bytes of a pool of blocks, in one arena allocated once.
//
// Layout (block-major): [num_blocks][num_layers][2 (0 = K, 1 = V)][num_kv_heads] head regions of
// HeadBytes() each (kv_format.h). For the float dtypes a head region is [block_size][head_dim]
// elements, so the arena is the C-order array
//   [num_blocks][num_layers][2][num_kv_heads][block_size][head_dim]
// and the element strides below apply. For the quantized dtypes a head region is the codes
// [block_size][row_code_bytes], then (16-byte aligned) the float32 parameters
// [block_size][params_per_row]; use the byte geometry (HeadBytes, CodesOffset, ParamsOffset).
// One block is one contiguous region of config.BytesPerBlock() bytes (moving a block between
// tiers is one memcpy) and, inside a block, one head's keys are contiguous (a kernel streams them).
// The arena is 64-byte aligned (kHugePageBytes-aligned, and advised as transparent huge pages on
// Linux, from kHugePageBytes up) and never reallocated; Arena() hands out shared ownership so that
// NumPy views keep it alive after the KvStorage is gone.
//
// Thread safety: WriteSlot, ReadSlot and the block copies are thread-safe: each takes the lock of
// the block(s) it touches. Raw pointers (Data, BlockData) are for bulk kernels, which take no
// locks: the caller (the scheduler) guarantees that no block is freed or rewritten while a kernel
// reads it, and that no two writers target the same slot at once.
// Errors: block ids out of range, layers and offsets out of range throw IndexOutOfRange; a bad
// source dtype or unquantizable K/V throws InvalidArgument (nothing written).
#pragma once

#include <cstdint>
#include <memory>

#include "ferrum_kv/config.h"
#include "ferrum_kv/kv_format.h"
#include "ferrum_kv/support/mutex.h"
#include "ferrum_kv/types.h"

namespace ferrum_kv {

class KvStorage {
 public:
  static constexpr int64_t kAlignment = 64;
  static constexpr int64_t kHugePageBytes = int64_t{2} << 20;

  // An arena of num_blocks blocks with the geometry of config (config.num_blocks is ignored, so
  // the host tier can reuse the device geometry). Zero-filled. Throws InvalidArgument on a bad
  // config, OutOfMemory when the arena is larger than the memory available (checked before it is
  // touched; errors.h) or cannot be allocated.
  KvStorage(const CacheConfig& config, int64_t num_blocks);
  explicit KvStorage(const CacheConfig& config) : KvStorage(config, config.num_blocks) {}
  KvStorage(const KvStorage&) = delete;
  KvStorage& operator=(const KvStorage&) = delete;

  const CacheConfig& config() const { return config_; }
  DType dtype() const { return config_.dtype; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t bytes_per_block() const { return bytes_per_block_; }
  int64_t total_bytes() const { return bytes_per_block_ * num_blocks_; }

  std::shared_ptr<uint8_t> Arena() const { return arena_; }
  uint8_t* Data() const { return arena_.get(); }
  uint8_t* BlockData(BlockId block) const { return Data() + block * bytes_per_block_; }

  // Byte geometry (every dtype). A head region is (layer, kv, head) of one block.
  const HeadRegionLayout& head_region() const { return head_region_; }
  int64_t HeadBytes() const { return head_region_.bytes; }
  int64_t KvBytes() const { return int64_t{config_.num_kv_heads} * HeadBytes(); }
  int64_t LayerBytes() const { return 2 * KvBytes(); }
  // Byte offset of head region (layer, kv, head) from its block's start.
  int64_t HeadRegionOffset(int32_t layer, int32_t kv, int32_t head) const {
    return layer * LayerBytes() + kv * KvBytes() + head * HeadBytes();
  }
  // Byte offsets, from the head region's start, of token offset's codes (the elements, for
  // float dtypes) and of its float32 parameters (quantized dtypes only).
  int64_t CodesOffset(int32_t offset) const { return offset * head_region_.row_code_bytes; }
  int64_t ParamsOffset(int32_t offset) const {
    return head_region_.params_offset + offset * head_region_.row_params_bytes();
  }
  // The dtype ReadSlot / ReadTokens produce: the storage dtype, or float32 (dequantized) for
  // quantized storage.
  DType ReadDType() const { return IsQuantized(dtype()) ? DType::kFloat32 : dtype(); }

  // Element strides of the 6-D layout above, float dtypes only (multiply by DTypeSize for bytes).
  int64_t BlockStride() const { return config_.ElementsPerBlock(); }
  int64_t LayerStride() const { return 2 * KvStride(); }
  int64_t KvStride() const { return int64_t{config_.num_kv_heads} * HeadStride(); }
  int64_t HeadStride() const { return int64_t{config_.block_size} * config_.head_dim; }
  int64_t TokenStride() const { return config_.head_dim; }
  // Elements of one token's K (or V) for one layer, packed: num_kv_heads * head_dim.
  int64_t ElementsPerToken() const { return config_.ElementsPerTokenPerLayer(); }

  // Writes one token's K and V ([num_kv_heads][head_dim] each) at (block, layer, offset).
  // Float storage: src_dtype float32 is converted to the storage dtype (round to nearest even);
  // otherwise it must equal the storage dtype and the bytes are copied as they are.
  // Quantized storage: src_dtype float32 or float16, quantized per row (kv_format.h); a
  // non-finite element (or, for int8/int4, a row whose max - min overflows) throws
  // InvalidArgument before anything is written.
  void WriteSlot(BlockId block, int32_t layer, int32_t offset, const void* k, const void* v,
                 DType src_dtype);
  // Copies one token's K and V, in ReadDType() (dequantized float32 for quantized storage), to
  // k and v.
  void ReadSlot(BlockId block, int32_t layer, int32_t offset, void* k, void* v) const;

  // Bulk scatter (vLLM's reshape_and_cache): token i's K and V ([num_kv_heads][head_dim] each, at
  // k + i * num_kv_heads * head_dim) go to slot slots[i] = block * block_size + offset of layer;
  // slot -1 is skipped. All slots are validated (IndexOutOfRange) before anything is written.
  // Takes no locks (see the thread-safety note above). src_dtype as for WriteSlot; for quantized
  // storage every row is checked before anything is written.
  void WriteTokens(int32_t layer, const int32_t* slots, int64_t n, const void* k, const void* v,
                   DType src_dtype);
  // Bulk gather, the inverse of WriteTokens, in ReadDType(); slot -1 is not allowed.
  void ReadTokens(int32_t layer, const int32_t* slots, int64_t n, void* k, void* v) const;

  // Copies every byte of block src to block dst of this arena (src != dst).
  void CopyBlock(BlockId src, BlockId dst);
  // Copies block src_block of src to block dst_block of dst (same geometry and dtype required).
  static void CopyBlockBetween(const KvStorage& src, BlockId src_block, KvStorage& dst,
                               BlockId dst_block);

 private:
  void CheckBlock(BlockId block) const;
  void CheckSlot(BlockId block, int32_t layer, int32_t offset) const;
  void CheckLayer(int32_t layer) const;
  void CheckSlots(const int32_t* slots, int64_t n, bool allow_skip) const;
  void CheckSourceDType(DType src_dtype) const;
  // Quantized storage: throws InvalidArgument unless every row of the n tokens' K and V can be
  // quantized (nothing is written before).
  void CheckQuantizable(const void* k, const void* v, int64_t n, DType src_dtype) const;
  // Copies (converts, quantizes) one token's rows of all heads between a packed
  // [num_kv_heads][head_dim] buffer and the arena, for K and V.
  void WriteToken(BlockId block, int32_t layer, int32_t offset, const void* k, const void* v,
                  DType src_dtype);
  void ReadToken(BlockId block, int32_t layer, int32_t offset, void* k, void* v) const;

  const CacheConfig config_;
  const HeadRegionLayout head_region_;
  const int64_t num_blocks_;
  const int64_t bytes_per_block_;
  std::shared_ptr<uint8_t> arena_;
  std::unique_ptr<Mutex[]> block_locks_;
};

}  // namespace ferrum_kv
