#include "ferrum_kv/prefix_key.h"

#include <cstring>
#include <random>
#include <vector>

#include "kernels/prefix_key_lanes.h"
#include "siphash.h"

namespace ferrum_kv {
namespace {

constexpr char kDomain[] = "ferrum-kv/v1";

uint64_t RandomWord(std::random_device& device) {
  return (uint64_t{device()} << 32) | device();
}

}  // namespace

PrefixKeyer::PrefixKeyer() {
  std::random_device device;
  secret0_ = RandomWord(device);
  secret1_ = RandomWord(device);
}

PrefixKeyer::PrefixKeyer(uint64_t secret0, uint64_t secret1)
    : secret0_(secret0), secret1_(secret1) {}

PrefixKey PrefixKeyer::Root(const std::string& namespace_id) const {
  std::vector<uint8_t> message(sizeof kDomain - 1 + namespace_id.size());
  std::memcpy(message.data(), kDomain, sizeof kDomain - 1);
  if (!namespace_id.empty()) {
    std::memcpy(message.data() + sizeof kDomain - 1, namespace_id.data(), namespace_id.size());
  }
  const siphash::Digest d = siphash::Hash({secret0_, secret1_}, message.data(), message.size());
  return PrefixKey{d.lo, d.hi};
}

void PrefixKeyer::Chain(const PrefixKey& parent, const int32_t* tokens, int64_t num_blocks,
                        int32_t block_size, PrefixKey* out) const {
  const uint64_t message_len = 16 + 4 * uint64_t(block_size);
  PrefixKey key = parent;
  for (int64_t b = 0; b < num_blocks; ++b) {
    const int32_t* block = tokens + b * block_size;
    siphash::Sip24 sip({secret0_, secret1_});
    sip.Word(key.lo);
    sip.Word(key.hi);
    int32_t t = 0;
    for (; t + 2 <= block_size; t += 2) {  // two little-endian uint32 ids per word
      sip.Word(uint64_t(uint32_t(block[t])) | (uint64_t(uint32_t(block[t + 1])) << 32));
    }
    const uint64_t tail = t < block_size ? uint64_t(uint32_t(block[t])) : 0;
    const siphash::Digest d = sip.Finish(tail, message_len);
    key = PrefixKey{d.lo, d.hi};
    out[b] = key;
  }
}

}  // namespace ferrum_kv

namespace ferrum_kv {

void PrefixKeyer::ChainMany(const KeyChainJob* jobs, int64_t n, int32_t block_size) const {
  static const bool lanes = kernels::KeyLanesAvx512Supported();
  if (lanes && n > 1) {
    kernels::ChainManyAvx512(secret0_, secret1_, jobs, n, block_size);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    Chain(jobs[i].parent, jobs[i].tokens, jobs[i].num_blocks, block_size, jobs[i].out);
  }
}

}  // namespace ferrum_kv
