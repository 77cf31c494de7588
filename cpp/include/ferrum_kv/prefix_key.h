// PrefixKey: how the prefix cache names a token prefix inside one process. A keyed 128-bit
// SipHash-2-4 chain over full blocks, under a secret drawn when the cache is built:
//
//   key_root(ns) = SipHash(secret, "ferrum-kv/v1" || ns)
//   key_i        = SipHash(secret, key_{i-1} as 16 little-endian bytes (lo, hi)
//                                  || the block_size token ids of block i as little-endian uint32)
//
// Like the SHA-256 chain of block_hash.h, a key names a block's tokens, every token before it and
// the namespace. SipHash is a pseudorandom function: without the secret nobody can construct two
// prefixes with one key (the attack that shares a prefix cache across tenants), and by chance two
// of N distinct prefixes share one with probability about N^2 / 2^129. It costs about a third of a
// SHA-256 link and needs no CPU extension, which is why lookup and publication use it; the SHA-256
// chain stays the public name of a block (block_hashes, cache events), reproducible anywhere.
// Keys mean nothing outside the PrefixKeyer (secret) that made them.
//
// Token ids are non-negative int32 (the callers check). Thread safety: a PrefixKeyer is immutable
// after construction (its methods are const and reentrant). Complexity: one SipHash of
// 16 + 4 * block_size bytes per block, a serial chain; no heap allocation. ChainMany runs
// independent chains side by side, 8 at a time in AVX-512 lanes where the CPU has AVX-512 (chosen
// at run time; one chain at a time otherwise), with identical results.
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

class PrefixKeyer {
 public:
  // A secret from std::random_device.
  PrefixKeyer();
  // A fixed secret (tests).
  PrefixKeyer(uint64_t secret0, uint64_t secret1);

  PrefixKey Root(const std::string& namespace_id) const;
  // out[i] = key_i of the num_blocks consecutive full blocks of tokens[0, num_blocks *
  // block_size), with key_{-1} = parent.
  void Chain(const PrefixKey& parent, const int32_t* tokens, int64_t num_blocks,
             int32_t block_size, PrefixKey* out) const;
  // Chain for each of jobs[0, n) (their outputs must not overlap their inputs or each other).
  void ChainMany(const KeyChainJob* jobs, int64_t n, int32_t block_size) const;

 private:
  uint64_t secret0_;
  uint64_t secret1_;
};

}  // namespace ferrum_kv
