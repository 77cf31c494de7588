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
// Copies data[0, len) to out (not overlapping it) and returns the XXH64 of the bytes it wrote, in
// one pass: each word is loaded once, hashed and stored, so the hash is that of out even if data
// changes during the call.
uint64_t Xxh64Copy(const uint8_t* data, size_t len, uint8_t* out, uint64_t seed = 0);

}  // namespace ferrum_kv
