#include "ferrum_kv/kv_storage.h"

#include <cstdlib>
#include <cstring>
#include <new>

#if __has_include(<sys/mman.h>)
#include <sys/mman.h>
#endif

#include "available_memory.h"
#include "ferrum_kv/dtype_convert.h"
#include "ferrum_kv/quantize.h"
#include "ferrum_kv/support/check.h"

namespace ferrum_kv {

namespace {

// Arenas of kHugePageBytes or more are aligned to it and advised as transparent huge pages (Linux,
// where THP is "madvise" or "always"): attention reads each block's K and V at scattered places,
// and on 4 KiB pages nearly every block costs TLB misses whose page walks miss the caches too
// (decode from DRAM is 1.15-1.25x faster on huge pages, docs/attention.md).
std::shared_ptr<uint8_t> AllocateArena(int64_t bytes) {
  const bool huge = bytes >= KvStorage::kHugePageBytes;
  const auto alignment =
      static_cast<size_t>(huge ? KvStorage::kHugePageBytes : KvStorage::kAlignment);
  const size_t rounded = (size_t(bytes) + alignment - 1) / alignment * alignment;
  // The arena is zero-filled below: past the memory the system has, that would end in the
  // kernel's out-of-memory killer rather than in an allocation failure.
  const int64_t available = AvailableMemoryBytes();
  if (int64_t(rounded) > available) {
    FKV_THROW(OutOfMemory, "a K/V arena of " << rounded << " bytes (" << (rounded >> 20)
                               << " MiB) does not fit in the " << available << " bytes ("
                               << (available >> 20) << " MiB) of memory available");
  }
  void* memory = std::aligned_alloc(alignment, rounded);
  if (memory == nullptr) {
    FKV_THROW(OutOfMemory, "cannot allocate a K/V arena of " << rounded << " bytes");
  }
#ifdef MADV_HUGEPAGE
  if (huge) madvise(memory, rounded, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
  std::memset(memory, 0, rounded);
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(memory), [](uint8_t* p) { std::free(p); });
}

// Locks two block mutexes in address order (so that concurrent copies cannot deadlock).
class PairLock {
 public:
  PairLock(Mutex* a, Mutex* b) : first_(a < b ? a : b), second_(a < b ? b : a) {
    first_->Lock();
    if (second_ != first_) second_->Lock();
  }
  ~PairLock() {
    if (second_ != first_) second_->Unlock();
    first_->Unlock();
  }
  PairLock(const PairLock&) = delete;
  PairLock& operator=(const PairLock&) = delete;

 private:
  Mutex* first_;
  Mutex* second_;
};

}  // namespace

KvStorage::KvStorage(const CacheConfig& config, int64_t num_blocks)
    : config_((config.Validate(), config)),
      head_region_(HeadRegion(config.dtype, config.head_dim, config.block_size)),
      num_blocks_(num_blocks),
      bytes_per_block_(config.BytesPerBlock()) {
  FKV_CHECK_ARG(num_blocks >= 1 && num_blocks <= kMaxBlocks,
                "num_blocks must be in [1, " << kMaxBlocks << "], got " << num_blocks);
  arena_ = AllocateArena(bytes_per_block_ * num_blocks_);
  block_locks_ = std::make_unique<Mutex[]>(size_t(num_blocks_));
}

void KvStorage::CheckBlock(BlockId block) const {
  FKV_CHECK_INDEX(block >= 0 && block < num_blocks_,
                  "block id " << block << " out of range [0, " << num_blocks_ << ")");
}

void KvStorage::CheckLayer(int32_t layer) const {
  FKV_CHECK_INDEX(layer >= 0 && layer < config_.num_layers,
                  "layer " << layer << " out of range [0, " << config_.num_layers << ")");
}

void KvStorage::CheckSlot(BlockId block, int32_t layer, int32_t offset) const {
  CheckBlock(block);
  CheckLayer(layer);
  FKV_CHECK_INDEX(offset >= 0 && offset < config_.block_size,
                  "offset " << offset << " out of range [0, " << config_.block_size << ")");
}

void KvStorage::CheckSlots(const int32_t* slots, int64_t n, bool allow_skip) const {
  const int64_t num_slots = num_blocks_ * config_.block_size;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t slot = slots[i];
    if (allow_skip && slot == -1) continue;
    FKV_CHECK_INDEX(slot >= 0 && slot < num_slots, "slots[" << i << "] = " << slot
                                                            << " out of range [0, " << num_slots
                                                            << ")" << (allow_skip ? " (or -1)" : ""));
  }
}

void KvStorage::CheckSourceDType(DType src_dtype) const {
  if (IsQuantized(config_.dtype)) {
    FKV_CHECK_ARG(src_dtype == DType::kFloat32 || src_dtype == DType::kFloat16,
                  "k/v dtype must be float32 or float16 for " << DTypeName(config_.dtype)
                                                              << " storage, got "
                                                              << DTypeName(src_dtype));
    return;
  }
  FKV_CHECK_ARG(src_dtype == DType::kFloat32 || src_dtype == config_.dtype,
                "k/v dtype must be float32 or the storage dtype " << DTypeName(config_.dtype)
                                                                   << ", got "
                                                                   << DTypeName(src_dtype));
}

void KvStorage::CheckQuantizable(const void* k, const void* v, int64_t n, DType src_dtype) const {
  if (!IsQuantized(config_.dtype)) return;
  const int64_t rows = n * config_.num_kv_heads;
  const void* sources[2] = {k, v};
  for (int kv = 0; kv < 2; ++kv) {
    const int64_t row = FindUnquantizableRow(config_.dtype, sources[kv], src_dtype, rows,
                                             config_.head_dim);
    FKV_CHECK_ARG(row < 0, (kv == 0 ? "k" : "v")
                               << " cannot be quantized to " << DTypeName(config_.dtype)
                               << ": token " << row / config_.num_kv_heads << ", head "
                               << row % config_.num_kv_heads
                               << " has a non-finite value"
                               << (IsAsymmetric(config_.dtype)
                                       ? " or a range (max - min) beyond float32"
                                       : ""));
  }
}

void KvStorage::WriteToken(BlockId block, int32_t layer, int32_t offset, const void* k,
                           const void* v, DType src_dtype) {
  const int64_t heads = config_.num_kv_heads;
  const int64_t src_row_bytes = config_.head_dim * DTypeSize(src_dtype);
  const void* sources[2] = {k, v};
  for (int32_t kv = 0; kv < 2; ++kv) {
    uint8_t* region = BlockData(block) + HeadRegionOffset(layer, kv, 0);
    if (IsQuantized(config_.dtype)) {
      QuantizeRows(config_.dtype, sources[kv], src_dtype, heads, config_.head_dim,
                   region + CodesOffset(offset), HeadBytes(), region + ParamsOffset(offset),
                   HeadBytes());
      continue;
    }
    for (int64_t head = 0; head < heads; ++head) {
      const auto* src = static_cast<const uint8_t*>(sources[kv]) + head * src_row_bytes;
      uint8_t* dst = region + head * HeadBytes() + CodesOffset(offset);
      if (src_dtype == config_.dtype) {
        std::memcpy(dst, src, size_t(src_row_bytes));
      } else {
        ConvertFromFloat32(reinterpret_cast<const float*>(src), config_.dtype, dst,
                           config_.head_dim);
      }
    }
  }
}

void KvStorage::ReadToken(BlockId block, int32_t layer, int32_t offset, void* k, void* v) const {
  const int64_t heads = config_.num_kv_heads;
  const int64_t row_bytes = config_.head_dim * DTypeSize(ReadDType());
  void* destinations[2] = {k, v};
  for (int32_t kv = 0; kv < 2; ++kv) {
    const uint8_t* region = BlockData(block) + HeadRegionOffset(layer, kv, 0);
    if (IsQuantized(config_.dtype)) {
      DequantizeRows(config_.dtype, region + CodesOffset(offset), HeadBytes(),
                     region + ParamsOffset(offset), HeadBytes(), heads, config_.head_dim,
                     static_cast<float*>(destinations[kv]));
      continue;
    }
    for (int64_t head = 0; head < heads; ++head) {
      std::memcpy(static_cast<uint8_t*>(destinations[kv]) + head * row_bytes,
                  region + head * HeadBytes() + CodesOffset(offset), size_t(row_bytes));
    }
  }
}

void KvStorage::WriteSlot(BlockId block, int32_t layer, int32_t offset, const void* k,
                          const void* v, DType src_dtype) {
  CheckSlot(block, layer, offset);
  CheckSourceDType(src_dtype);
  CheckQuantizable(k, v, 1, src_dtype);
  MutexLock lock(&block_locks_[block]);
  WriteToken(block, layer, offset, k, v, src_dtype);
}

void KvStorage::ReadSlot(BlockId block, int32_t layer, int32_t offset, void* k, void* v) const {
  CheckSlot(block, layer, offset);
  MutexLock lock(&block_locks_[block]);
  ReadToken(block, layer, offset, k, v);
}

void KvStorage::WriteTokens(int32_t layer, const int32_t* slots, int64_t n, const void* k,
                            const void* v, DType src_dtype) {
  CheckLayer(layer);
  CheckSourceDType(src_dtype);
  CheckSlots(slots, n, /*allow_skip=*/true);
  CheckQuantizable(k, v, n, src_dtype);
  const int64_t token_bytes = ElementsPerToken() * DTypeSize(src_dtype);
  for (int64_t i = 0; i < n; ++i) {
    if (slots[i] == -1) continue;
    WriteToken(slots[i] / config_.block_size, layer, slots[i] % config_.block_size,
               static_cast<const uint8_t*>(k) + i * token_bytes,
               static_cast<const uint8_t*>(v) + i * token_bytes, src_dtype);
  }
}

void KvStorage::ReadTokens(int32_t layer, const int32_t* slots, int64_t n, void* k,
                           void* v) const {
  CheckLayer(layer);
  CheckSlots(slots, n, /*allow_skip=*/false);
  const int64_t token_bytes = ElementsPerToken() * DTypeSize(ReadDType());
  for (int64_t i = 0; i < n; ++i) {
    ReadToken(slots[i] / config_.block_size, layer, slots[i] % config_.block_size,
              static_cast<uint8_t*>(k) + i * token_bytes,
              static_cast<uint8_t*>(v) + i * token_bytes);
  }
}

void KvStorage::CopyBlock(BlockId src, BlockId dst) {
  CheckBlock(src);
  CheckBlock(dst);
  FKV_CHECK_ARG(src != dst, "cannot copy block " << src << " onto itself");
  PairLock lock(&block_locks_[src], &block_locks_[dst]);
  std::memcpy(BlockData(dst), BlockData(src), size_t(bytes_per_block_));
}

void KvStorage::CopyBlockBetween(const KvStorage& src, BlockId src_block, KvStorage& dst,
                                 BlockId dst_block) {
  src.CheckBlock(src_block);
  dst.CheckBlock(dst_block);
  FKV_CHECK_ARG(src.bytes_per_block_ == dst.bytes_per_block_ && src.dtype() == dst.dtype(),
                "storages differ: " << src.bytes_per_block_ << " vs " << dst.bytes_per_block_
                                    << " bytes per block");
  FKV_CHECK_ARG(&src != &dst, "use CopyBlock within one storage");
  PairLock lock(&src.block_locks_[src_block], &dst.block_locks_[dst_block]);
  std::memcpy(dst.BlockData(dst_block), src.BlockData(src_block), size_t(src.bytes_per_block_));
}

}  // namespace ferrum_kv
