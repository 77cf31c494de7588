// XXH64 (Yann Collet's xxHash, 64-bit variant, seed 0 unless given): the payload checksum of tier
// values (docs/tiers.md). Any xxHash library computes the same value (`xxhash.xxh64_intdigest`
// in Python), so another program can check a value. Not a MAC: it catches corruption, not forgery.
//
// Thread safety: a pure function of its arguments. Complexity: one pass, about 1 byte per cycle
// per lane (four lanes).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ferrum_kv {

uint64_t Xxh64(const uint8_t* data, size_t len, uint64_t seed = 0);

}  // namespace ferrum_kv
