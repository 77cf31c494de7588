// Content hashes of token blocks for the prefix cache: a SHA-256 hash chain over full blocks,
// reproducible in any process and language (docs/layout.md, "Prefix hash chain"):
//
//   parent_0 = RootHash(ns)  = SHA-256("ferrum-kv/v1" || ns)
//   h_i      = SHA-256(parent_i || the block_size token ids of block i as little-endian uint32)
//   parent_{i+1} = h_i
//
// A block's hash thus names its own tokens, every token before it and the namespace (tenant salt,
// model, adapter); equal hashes mean equal prefixes unless SHA-256 collides.
//
// Token ids are non-negative int32: a negative id throws InvalidArgument (checked for the whole
// input before anything is written), as does block_size < 1 or num_blocks < 0.
//
// Thread safety: pure functions of their arguments (reentrant and thread-safe).
// Complexity: one SHA-256 of 32 + 4 * block_size bytes per block, a serial chain; no heap
// allocation for block_size <= 501 (one per call beyond). SHA-256 runs on the x86 SHA extensions
// where the CPU has them (chosen at run time), in portable C++ otherwise; both give equal digests.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ferrum_kv {

using BlockHash = std::array<uint8_t, 32>;

// std::hash-compatible: a digest is uniformly distributed, so its first 8 bytes are a good key.
struct BlockHashHasher {
  size_t operator()(const BlockHash& hash) const noexcept {
    size_t key;
    std::memcpy(&key, hash.data(), sizeof key);
    return key;
  }
};

// parent_0 of the chains in namespace ns[0, ns_len) (ns may be null when ns_len is 0).
BlockHash RootHash(const uint8_t* ns, size_t ns_len);

// The hash of one block: SHA-256(parent || tokens[0, block_size) as little-endian uint32).
BlockHash HashBlock(const BlockHash& parent, const int32_t* tokens, int32_t block_size);

// The chain over num_blocks consecutive full blocks of tokens[0, num_blocks * block_size):
// out[i] = h_i with parent_0 = parent. out must not overlap parent.
void HashBlocks(const BlockHash& parent, const int32_t* tokens, int64_t num_blocks,
                int32_t block_size, BlockHash* out);

// Throws InvalidArgument naming the first negative id in tokens[begin, end), if any (HashBlocks
// runs it on the tokens it hashes).
void CheckTokenIds(const int32_t* tokens, int64_t begin, int64_t end);

// Which SHA-256 implementation runs in this process: "sha-ni" or "portable".
const char* Sha256Implementation();

}  // namespace ferrum_kv
