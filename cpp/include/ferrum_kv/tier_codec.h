// TierCodec: the value format of the storage tiers (docs/tiers.md, "Values"): one value per
// block, a 128-byte header followed by the block's bytes exactly as the arena holds them.
//
//   offset size  field (integers little-endian)
//        0    4  magic "FKVT"
//        4    2  format version (kTierFormatVersion)
//        6    2  flags: bit 0 set = bytes [96, 128) hold a MAC
//        8   16  fingerprint: what makes bytes compatible (model, geometry, dtype, format; the
//                tier client derives it, docs/tiers.md "Keys")
//       24   32  the block's public SHA-256 chain hash (block_hashes(); namespace included)
//       56    8  payload length in bytes (the config's bytes_per_block)
//       64    8  XXH64 (seed 0) of the payload
//       72   24  zero
//       96   32  HMAC-SHA256(secret, bytes [0, 96) || payload) with a secret, else zero
//      128    -  payload
//
// A value opens only if every field matches what the reader expects: the codec's fingerprint and
// payload length, the block's hash, the checksum, and, for a codec with a secret, the MAC (a
// codec without a secret accepts only values without one: the fingerprint says which).
//
// Thread safety: immutable after construction; Seal and Open may run concurrently.
// Complexity: one XXH64 pass over the payload (and one SHA-256 pass with a secret); CopyPayload
// copies in the XXH64 pass.
// Errors: the constructor throws InvalidArgument for a fingerprint that is not 16 bytes or a
// payload length < 1.
#pragma once

#include <cstdint>
#include <string>

#include "ferrum_kv/block_hash.h"

namespace ferrum_kv {

inline constexpr uint16_t kTierFormatVersion = 1;
inline constexpr int64_t kTierHeaderBytes = 128;
inline constexpr int64_t kTierFingerprintBytes = 16;

enum class TierValueStatus : uint8_t {
  kOk,
  kMalformed,        // too short or long, bad magic, version, flags or length
  kForeign,          // another fingerprint (model, geometry, dtype, format or MAC use)
  kWrongBlock,       // another block's hash
  kBadChecksum,      // payload corrupted
  kUnauthenticated,  // the MAC does not match (written without this codec's secret)
};
// "ok" | "malformed" | "foreign" | "wrong_block" | "bad_checksum" | "unauthenticated".
const char* TierValueStatusName(TierValueStatus status);

class TierCodec {
 public:
  // secret: empty for no MAC.
  TierCodec(const std::string& fingerprint, int64_t payload_bytes, std::string secret);

  int64_t payload_bytes() const { return payload_bytes_; }
  int64_t value_bytes() const { return kTierHeaderBytes + payload_bytes_; }
  const std::string& fingerprint() const { return fingerprint_; }
  bool authenticates() const { return !secret_.empty(); }

  // Writes the header of value[0, value_bytes()) whose payload is already in place at
  // value + kTierHeaderBytes.
  void Seal(const BlockHash& hash, uint8_t* value) const;
  // Checks value[0, len) as the value of the block named hash: OpenHeader, then CheckPayload.
  TierValueStatus Open(const BlockHash& hash, const uint8_t* value, int64_t len) const;
  // The two halves of Open, for a reader that checks the payload as it copies it (so that bytes
  // another thread or process may still change are never checked in one state and used in
  // another): OpenHeader checks every field but the checksum and the MAC (len is the whole
  // value's); CheckPayload checks the checksum and the MAC of payload[0, payload_bytes())
  // against header (kTierHeaderBytes bytes that passed OpenHeader): kOk, kBadChecksum or
  // kUnauthenticated. CopyPayload copies payload to out (payload_bytes(), not overlapping) and
  // checks the bytes it wrote there, the checksum in the same pass (Xxh64Copy).
  TierValueStatus OpenHeader(const BlockHash& hash, const uint8_t* value, int64_t len) const;
  TierValueStatus CheckPayload(const uint8_t* header, const uint8_t* payload) const;
  TierValueStatus CopyPayload(const uint8_t* header, const uint8_t* payload, uint8_t* out) const;

 private:
  // The rest of CheckPayload once the payload's checksum is known.
  TierValueStatus Verify(const uint8_t* header, uint64_t checksum, const uint8_t* payload) const;
  void Mac(const uint8_t* header, const uint8_t* payload, uint8_t* mac) const;

  const std::string fingerprint_;
  const int64_t payload_bytes_;
  const std::string secret_;
};

}  // namespace ferrum_kv
