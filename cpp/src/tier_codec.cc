#include "ferrum_kv/tier_codec.h"

#include <cstring>
#include <utility>

#include "ferrum_kv/support/check.h"
#include "hmac_sha256.h"
#include "xxhash64.h"

namespace ferrum_kv {
namespace {

constexpr uint8_t kMagic[4] = {'F', 'K', 'V', 'T'};
constexpr uint16_t kFlagMac = 1;
constexpr int64_t kMacOffset = 96;

template <typename T>
void Store(uint8_t* p, T v) {  // little-endian hosts only (see xxhash64.cc)
  std::memcpy(p, &v, sizeof v);
}

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace

const char* TierValueStatusName(TierValueStatus status) {
  switch (status) {
    case TierValueStatus::kOk: return "ok";
    case TierValueStatus::kMalformed: return "malformed";
    case TierValueStatus::kForeign: return "foreign";
    case TierValueStatus::kWrongBlock: return "wrong_block";
    case TierValueStatus::kBadChecksum: return "bad_checksum";
    case TierValueStatus::kUnauthenticated: return "unauthenticated";
  }
  return "?";
}

TierCodec::TierCodec(const std::string& fingerprint, int64_t payload_bytes, std::string secret)
    : fingerprint_(fingerprint), payload_bytes_(payload_bytes), secret_(std::move(secret)) {
  FKV_CHECK_ARG(int64_t(fingerprint.size()) == kTierFingerprintBytes,
                "a tier fingerprint has " << kTierFingerprintBytes << " bytes, got "
                                          << fingerprint.size());
  FKV_CHECK_ARG(payload_bytes >= 1, "payload_bytes must be >= 1, got " << payload_bytes);
}

void TierCodec::Mac(const uint8_t* header, const uint8_t* payload, uint8_t* mac) const {
  const std::pair<const uint8_t*, size_t> parts[] = {
      {header, size_t(kMacOffset)}, {payload, size_t(payload_bytes_)}};
  HmacSha256(secret_, parts, 2, mac);
}

void TierCodec::Seal(const BlockHash& hash, uint8_t* value) const {
  std::memset(value, 0, size_t(kTierHeaderBytes));
  std::memcpy(value, kMagic, 4);
  Store<uint16_t>(value + 4, kTierFormatVersion);
  Store<uint16_t>(value + 6, authenticates() ? kFlagMac : 0);
  std::memcpy(value + 8, fingerprint_.data(), size_t(kTierFingerprintBytes));
  std::memcpy(value + 24, hash.data(), hash.size());
  Store<uint64_t>(value + 56, uint64_t(payload_bytes_));
  Store<uint64_t>(value + 64, Xxh64(value + kTierHeaderBytes, size_t(payload_bytes_)));
  if (authenticates()) Mac(value, value + kTierHeaderBytes, value + kMacOffset);
}

TierValueStatus TierCodec::Open(const BlockHash& hash, const uint8_t* value, int64_t len) const {
  const TierValueStatus status = OpenHeader(hash, value, len);
  return status == TierValueStatus::kOk ? CheckPayload(value, value + kTierHeaderBytes) : status;
}

TierValueStatus TierCodec::OpenHeader(const BlockHash& hash, const uint8_t* value,
                                      int64_t len) const {
  if (len != value_bytes() || std::memcmp(value, kMagic, 4) != 0 ||
      Load<uint16_t>(value + 4) != kTierFormatVersion ||
      Load<uint16_t>(value + 6) != (authenticates() ? kFlagMac : 0) ||
      Load<uint64_t>(value + 56) != uint64_t(payload_bytes_)) {
    return TierValueStatus::kMalformed;
  }
  if (std::memcmp(value + 8, fingerprint_.data(), size_t(kTierFingerprintBytes)) != 0) {
    return TierValueStatus::kForeign;
  }
  if (std::memcmp(value + 24, hash.data(), hash.size()) != 0) return TierValueStatus::kWrongBlock;
  return TierValueStatus::kOk;
}

TierValueStatus TierCodec::CheckPayload(const uint8_t* header, const uint8_t* payload) const {
  return Verify(header, Xxh64(payload, size_t(payload_bytes_)), payload);
}

TierValueStatus TierCodec::CopyPayload(const uint8_t* header, const uint8_t* payload,
                                       uint8_t* out) const {
  return Verify(header, Xxh64Copy(payload, size_t(payload_bytes_), out), out);
}

TierValueStatus TierCodec::Verify(const uint8_t* header, uint64_t checksum,
                                  const uint8_t* payload) const {
  if (Load<uint64_t>(header + 64) != checksum) return TierValueStatus::kBadChecksum;
  if (authenticates()) {
    uint8_t mac[32];
    Mac(header, payload, mac);
    // Constant time: a forger learns nothing from how long a wrong MAC took to reject.
    uint8_t diff = 0;
    for (int i = 0; i < 32; ++i) diff |= uint8_t(mac[i] ^ header[kMacOffset + i]);
    if (diff != 0) return TierValueStatus::kUnauthenticated;
  }
  return TierValueStatus::kOk;
}

}  // namespace ferrum_kv
