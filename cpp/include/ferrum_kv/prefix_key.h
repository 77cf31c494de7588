// PrefixKey: how the prefix cache names a token prefix inside one process. A chain of keyed
// 128-bit pseudorandom functions over full blocks, under a secret drawn when the cache is built:
//
//   key_root(ns) = SipHash-2-4-128(secret, "ferrum-kv/v1" || ns)
//   key_i        = PRF(key_{i-1}, the block_size token ids of block i)
//
// with one of two keyed functions (schemes), picked per PrefixKeyer from what the CPU has:
//   kAes     (AES-NI): an AES-128 CBC-MAC digest of the block's tokens, then one AES of
//            key_{i-1} xor the digest, under two keys derived from the secret
//            (kernels/prefix_key_aes.h has the definition and the collision argument). Block
//            digests are independent, so even one chain runs them side by side.
//   kSipHash (anywhere): key_i = SipHash-2-4-128(secret, key_{i-1} as 16 little-endian bytes (lo,
//            hi) || the token ids as little-endian uint32).
// Like the SHA-256 chain of block_hash.h, a key names a block's tokens, every token before it and
// the namespace. Both are keyed with the secret: without it nobody can construct two
// prefixes with one key (the attack that shares a prefix cache across tenants), and by chance two
// of N distinct prefixes share one with probability about N^2 / 2^128. They cost a fraction of a
// SHA-256 link, which is why lookup and publication use them; the SHA-256 chain stays the public
// name of a block (block_hashes, cache events), reproducible anywhere. Keys mean nothing outside
// the PrefixKeyer (secret and scheme) that made them.
//
// Token ids are non-negative int32 (the callers check). Thread safety: a PrefixKeyer is immutable
// after construction (its methods are const and reentrant). Complexity: per block, 1 + ceil(
// block_size / 4) AES encryptions (kAes) or one SipHash of 16 + 4 * block_size bytes (kSipHash);
// no heap allocation. ChainMany runs independent chains side by side (kAes) with results equal
// to Chain per job.
#pragma once

#include <cstdint>
#include <string>

namespace ferrum_kv {

struct PrefixKey {
  uint64_t lo = 0;
  uint64_t hi = 0;
  friend bool operator==(const PrefixKey& a, const PrefixKey& b) {
    return a.lo == b.lo && a.hi == b.hi;
  }
  friend bool operator!=(const PrefixKey& a, const PrefixKey& b) { return !(a == b); }
};

// One chain for PrefixKeyer::ChainMany: out[i] = key_i of the num_blocks >= 0 full blocks of
// tokens[0, num_blocks * block_size), with key_{-1} = parent.
struct KeyChainJob {
  PrefixKey parent;
  const int32_t* tokens = nullptr;
  int64_t num_blocks = 0;
  PrefixKey* out = nullptr;
};

// An expanded AES-128 key: the 11 round keys.
struct AesRoundKeys {
  alignas(16) uint8_t bytes[11][16];
};

class PrefixKeyer {
 public:
  enum class Scheme { kAes, kSipHash };
  // kAes where the CPU has AES-NI, else kSipHash.
  static Scheme DefaultScheme();

  // A secret from std::random_device, the default scheme.
  PrefixKeyer();
  // A fixed secret (tests). kAes requires AES-NI (DefaultScheme() == kAes): InvalidArgument
  // otherwise.
  PrefixKeyer(uint64_t secret0, uint64_t secret1, Scheme scheme = DefaultScheme());

  Scheme scheme() const { return scheme_; }

  PrefixKey Root(const std::string& namespace_id) const;
  // out[i] = key_i of the num_blocks consecutive full blocks of tokens[0, num_blocks *
  // block_size), with key_{-1} = parent.
  void Chain(const PrefixKey& parent, const int32_t* tokens, int64_t num_blocks,
             int32_t block_size, PrefixKey* out) const;
  // Chain for each of jobs[0, n) (their outputs must not overlap their inputs or each other).
  void ChainMany(const KeyChainJob* jobs, int64_t n, int32_t block_size) const;

 private:
  PrefixKey ComputeRoot(const std::string& namespace_id) const;

  uint64_t secret0_;
  uint64_t secret1_;
  Scheme scheme_;
  AesRoundKeys token_key_;  // kAes: the two CBC-MAC keys, derived from the secret
  AesRoundKeys chain_key_;
  PrefixKey empty_root_;  // Root("") (most deployments use only that namespace)
};

}  // namespace ferrum_kv
