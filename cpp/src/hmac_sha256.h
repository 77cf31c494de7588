// HMAC-SHA256 (RFC 2104 over FIPS 180-4 SHA-256) of a message given in parts, for the keyed MAC of
// tier values (docs/tiers.md): HMAC(key, part_0 || part_1 || ...).
//
// Thread safety: pure functions of their arguments. Complexity: two SHA-256 passes over 64 bytes
// plus one over the message (SHA extensions where the CPU has them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

namespace ferrum_kv {

// parts: num_parts (pointer, length) pairs. Writes 32 bytes to mac.
void HmacSha256(const std::string& key, const std::pair<const uint8_t*, size_t>* parts,
                size_t num_parts, uint8_t* mac);

}  // namespace ferrum_kv
