// KvStorage: the K/V bytes of a pool of blocks, in one arena allocated once.
//
// Layout (block-major, C order, element type config.dtype):
//   [num_blocks][num_layers][2 (0 = K, 1 = V)][num_kv_heads][block_size][head_dim]
// so one block is one contiguous region of config.BytesPerBlock() bytes (moving a block between
// tiers is one memcpy) and, inside a block, one head's keys are contiguous (a kernel streams them).
// The arena is 64-byte aligned (kHugePageBytes-aligned, and advised as transparent huge pages on
// Linux, from kHugePageBytes up) and never reallocated; Arena() hands out shared ownership so that
// NumPy views keep it alive after the KvStorage is gone.
//
// Thread safety: WriteSlot, ReadSlot and the block copies are thread-safe: each takes the lock of
// the block(s) it touches. Raw pointers (Data, BlockData) are for bulk kernels, which take no
// locks: the caller (the scheduler) guarantees that no block is freed or rewritten while a kernel
// reads it, and that no two writers target the same slot at once.
// Errors: block ids out of range, layers and offsets out of range throw IndexOutOfRange.
#pragma once

#include <cstdint>
#include <memory>

#include "ferrum_kv/config.h"
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

  // Element strides of the 6-D layout above (multiply by DTypeSize for bytes).
  int64_t BlockStride() const { return config_.ElementsPerBlock(); }
  int64_t LayerStride() const { return 2 * KvStride(); }
  int64_t KvStride() const { return int64_t{config_.num_kv_heads} * HeadStride(); }
  int64_t HeadStride() const { return int64_t{config_.block_size} * config_.head_dim; }
  int64_t TokenStride() const { return config_.head_dim; }
  // Elements of one token's K (or V) for one layer, packed: num_kv_heads * head_dim.
  int64_t ElementsPerToken() const { return config_.ElementsPerTokenPerLayer(); }

  // Writes one token's K and V ([num_kv_heads][head_dim] each) at (block, layer, offset).
  // src_dtype float32 is converted to the storage dtype (round to nearest even); otherwise it must
  // equal the storage dtype and the bytes are copied as they are.
  void WriteSlot(BlockId block, int32_t layer, int32_t offset, const void* k, const void* v,
                 DType src_dtype);
  // Copies one token's K and V, in the storage dtype, to k and v.
  void ReadSlot(BlockId block, int32_t layer, int32_t offset, void* k, void* v) const;

  // Bulk scatter (vLLM's reshape_and_cache): token i's K and V ([num_kv_heads][head_dim] each, at
  // k + i * num_kv_heads * head_dim) go to slot slots[i] = block * block_size + offset of layer;
  // slot -1 is skipped. All slots are validated (IndexOutOfRange) before anything is written.
  // Takes no locks (see the thread-safety note above). src_dtype as for WriteSlot.
  void WriteTokens(int32_t layer, const int32_t* slots, int64_t n, const void* k, const void* v,
                   DType src_dtype);
  // Bulk gather, the inverse of WriteTokens, in the storage dtype; slot -1 is not allowed.
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
  // Copies (or converts from float32) one token's rows of all heads between a packed
  // [num_kv_heads][head_dim] buffer and the arena, for K and V.
  void WriteToken(int64_t key_byte_offset, const void* k, const void* v, DType src_dtype);
  void ReadToken(int64_t key_byte_offset, void* k, void* v) const;
  // Byte offset of (block, layer, K, head 0, offset, 0); V is KvStride() elements further.
  int64_t SlotByteOffset(BlockId block, int32_t layer, int32_t offset) const;

  const CacheConfig config_;
  const int64_t num_blocks_;
  const int64_t bytes_per_block_;
  std::shared_ptr<uint8_t> arena_;
  std::unique_ptr<Mutex[]> block_locks_;
};

}  // namespace ferrum_kv
