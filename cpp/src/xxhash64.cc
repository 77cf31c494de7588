#include "xxhash64.h"

#include <cstring>

namespace ferrum_kv {
namespace {

constexpr uint64_t kPrime1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t kPrime2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kPrime3 = 0x165667B19E3779F9ull;
constexpr uint64_t kPrime4 = 0x85EBCA77C2B2AE63ull;
constexpr uint64_t kPrime5 = 0x27D4EB2F165667C5ull;

uint64_t RotateLeft(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// The format is little-endian; so is every machine this library builds for (x86-64, arm64).
uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

uint32_t Load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

uint64_t Round(uint64_t acc, uint64_t input) {
  acc += input * kPrime2;
  return RotateLeft(acc, 31) * kPrime1;
}

uint64_t MergeRound(uint64_t acc, uint64_t lane) {
  acc ^= Round(0, lane);
  return acc * kPrime1 + kPrime4;
}

// XXH64 of data[0, len); with kCopy, also stores every word it loads to out (so the hash is
// that of the bytes written to out, even if data changes meanwhile).
template <bool kCopy>
uint64_t Xxh64Impl(const uint8_t* data, size_t len, uint64_t seed, uint8_t* out) {
  const auto load64 = [&](const uint8_t* q) {
    const uint64_t v = Load64(q);
    if constexpr (kCopy) std::memcpy(out + (q - data), &v, 8);
    return v;
  };
  const auto load32 = [&](const uint8_t* q) {
    const uint32_t v = Load32(q);
    if constexpr (kCopy) std::memcpy(out + (q - data), &v, 4);
    return v;
  };
  const auto load8 = [&](const uint8_t* q) {
    const uint8_t v = *q;
    if constexpr (kCopy) out[q - data] = v;
    return v;
  };
  const uint8_t* p = data;
  const uint8_t* const end = data + len;
  uint64_t h;
  if (len >= 32) {
    uint64_t v1 = seed + kPrime1 + kPrime2;
    uint64_t v2 = seed + kPrime2;
    uint64_t v3 = seed;
    uint64_t v4 = seed - kPrime1;
    for (; p + 32 <= end; p += 32) {
      v1 = Round(v1, load64(p));
      v2 = Round(v2, load64(p + 8));
      v3 = Round(v3, load64(p + 16));
      v4 = Round(v4, load64(p + 24));
    }
    h = RotateLeft(v1, 1) + RotateLeft(v2, 7) + RotateLeft(v3, 12) + RotateLeft(v4, 18);
    h = MergeRound(h, v1);
    h = MergeRound(h, v2);
    h = MergeRound(h, v3);
    h = MergeRound(h, v4);
  } else {
    h = seed + kPrime5;
  }
  h += uint64_t(len);
  for (; p + 8 <= end; p += 8) h = RotateLeft(h ^ Round(0, load64(p)), 27) * kPrime1 + kPrime4;
  if (p + 4 <= end) {
    h = RotateLeft(h ^ (uint64_t(load32(p)) * kPrime1), 23) * kPrime2 + kPrime3;
    p += 4;
  }
  for (; p < end; ++p) h = RotateLeft(h ^ (uint64_t(load8(p)) * kPrime5), 11) * kPrime1;
  h ^= h >> 33;
  h *= kPrime2;
  h ^= h >> 29;
  h *= kPrime3;
  h ^= h >> 32;
  return h;
}

}  // namespace

uint64_t Xxh64(const uint8_t* data, size_t len, uint64_t seed) {
  return Xxh64Impl<false>(data, len, seed, nullptr);
}

uint64_t Xxh64Copy(const uint8_t* data, size_t len, uint8_t* out, uint64_t seed) {
  return Xxh64Impl<true>(data, len, seed, out);
}

}  // namespace ferrum_kv
