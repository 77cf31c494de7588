#include "ferrum_kv/block_export.h"

#include <algorithm>
#include <cassert>

#include "ferrum_kv/support/check.h"

namespace ferrum_kv {

BlockExportQueue::BlockExportQueue(int64_t capacity) : capacity_(capacity) {
  FKV_CHECK_ARG(capacity >= 1, "the tier write queue needs a capacity >= 1, got " << capacity);
  ring_.resize(size_t(capacity));
  in_flight_.reserve(size_t(capacity));
}

bool BlockExportQueue::Offer(BlockId block, const BlockHash& hash) {
  if (size_ + in_flight() >= capacity_) {
    ++skipped_;
    return false;
  }
  ring_[size_t((head_ + size_) % capacity_)] = Entry{block, hash};
  ++size_;
  ++offered_;
  return true;
}

int64_t BlockExportQueue::Take(int64_t max, BlockId* blocks, BlockHash* hashes) {
  const int64_t n = std::min(max, size_);
  for (int64_t i = 0; i < n; ++i) {
    const Entry& entry = ring_[size_t(head_)];
    blocks[i] = entry.block;
    hashes[i] = entry.hash;
    in_flight_.push_back(entry.block);  // within the reserved capacity
    head_ = (head_ + 1) % capacity_;
  }
  size_ -= n;
  return n;
}

void BlockExportQueue::Finish(const BlockId* blocks, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const auto it = std::find(in_flight_.begin(), in_flight_.end(), blocks[i]);
    assert(it != in_flight_.end());
    if (it == in_flight_.end()) continue;
    *it = in_flight_.back();
    in_flight_.pop_back();
    ++exported_;
  }
}

void BlockExportQueue::CountPins(std::vector<int32_t>* pins) const {
  for (int64_t i = 0; i < size_; ++i) ++(*pins)[size_t(ring_[size_t((head_ + i) % capacity_)].block)];
  for (BlockId block : in_flight_) ++(*pins)[size_t(block)];
}

void BlockExportQueue::CheckInvariants() const {
  FKV_CHECK_INVARIANT(size_ >= 0 && size_ + in_flight() <= capacity_,
                      "tier write queue: " << size_ << " pending + " << in_flight()
                                           << " in flight > capacity " << capacity_);
}

}  // namespace ferrum_kv
