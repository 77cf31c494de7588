#include "ferrum_kv/prefix_key.h"

#include <cstring>
#include <random>
#include <vector>

#include "ferrum_kv/support/check.h"
#include "kernels/prefix_key_aes.h"
#include "siphash.h"

namespace ferrum_kv {
namespace {

constexpr char kDomain[] = "ferrum-kv/v1";
// Unlike every root message, these do not start with kDomain.
constexpr char kTokenKeyDomain[] = "ferrum-kv/aes-token-key";
constexpr char kChainKeyDomain[] = "ferrum-kv/aes-chain-key";

uint64_t RandomWord() {
  std::random_device device;
  return (uint64_t{device()} << 32) | device();
}

// The AES-128 key SipHash(secret, domain) (16 bytes: lo, hi little-endian), expanded.
AesRoundKeys DeriveAesKey(uint64_t secret0, uint64_t secret1, const char* domain, size_t len) {
  const siphash::Digest d =
      siphash::Hash({secret0, secret1}, reinterpret_cast<const uint8_t*>(domain), len);
  uint8_t key[16];
  std::memcpy(key, &d.lo, 8);
  std::memcpy(key + 8, &d.hi, 8);
  AesRoundKeys out;
  kernels::AesExpandKey(key, &out);
  return out;
}

}  // namespace

PrefixKeyer::Scheme PrefixKeyer::DefaultScheme() {
  static const Scheme scheme = kernels::AesNiSupported() ? Scheme::kAes : Scheme::kSipHash;
  return scheme;
}

PrefixKeyer::PrefixKeyer() : PrefixKeyer(RandomWord(), RandomWord()) {}

PrefixKeyer::PrefixKeyer(uint64_t secret0, uint64_t secret1, Scheme scheme)
    : secret0_(secret0),
      secret1_(secret1),
      scheme_(scheme),
      token_key_{},
      chain_key_{},
      empty_root_{} {
  FKV_CHECK_ARG(scheme_ != Scheme::kAes || kernels::AesNiSupported(),
                "the AES prefix-key scheme needs AES-NI, which this CPU lacks");
  if (scheme_ == Scheme::kAes) {
    token_key_ = DeriveAesKey(secret0, secret1, kTokenKeyDomain, sizeof kTokenKeyDomain - 1);
    chain_key_ = DeriveAesKey(secret0, secret1, kChainKeyDomain, sizeof kChainKeyDomain - 1);
  }
  empty_root_ = ComputeRoot("");
}

PrefixKey PrefixKeyer::Root(const std::string& namespace_id) const {
  return namespace_id.empty() ? empty_root_ : ComputeRoot(namespace_id);
}

PrefixKey PrefixKeyer::ComputeRoot(const std::string& namespace_id) const {
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
  if (scheme_ == Scheme::kAes) {
    const KeyChainJob job{parent, tokens, num_blocks, out};
    ChainMany(&job, 1, block_size);
    return;
  }
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
  if (scheme_ == Scheme::kAes) {
    kernels::AesChainMany(token_key_, chain_key_, jobs, n, block_size);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    Chain(jobs[i].parent, jobs[i].tokens, jobs[i].num_blocks, block_size, jobs[i].out);
  }
}

}  // namespace ferrum_kv
