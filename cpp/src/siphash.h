// SipHash-2-4 with a 128-bit output (Aumasson and Bernstein, "SipHash: a fast short-input PRF";
// the reference implementation's "siphash" with outlen 16), internal to the core. A keyed
// pseudorandom function: without the 128-bit key, outputs of distinct messages look independent
// and uniformly random, so nobody can aim two messages at one output.
//
// The state is exposed word by word so that callers can feed structured messages (a parent key,
// then token ids) without first copying them into a byte buffer. Feeding the little-endian 64-bit
// words of a byte string, then Finish with its last len % 8 bytes, equals Hash of that string.
//
// Thread safety: a Sip24 is a value; the functions are pure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ferrum_kv::siphash {

struct Key {
  uint64_t k0 = 0;
  uint64_t k1 = 0;
};

struct Digest {
  uint64_t lo = 0;  // bytes [0, 8) of the reference output, little-endian
  uint64_t hi = 0;  // bytes [8, 16)
};

class Sip24 {
 public:
  explicit Sip24(const Key& key)
      : v0_(key.k0 ^ 0x736f6d6570736575ull),
        v1_(key.k1 ^ 0x646f72616e646f6dull ^ 0xee),  // ^ 0xee: the 128-bit variant
        v2_(key.k0 ^ 0x6c7967656e657261ull),
        v3_(key.k1 ^ 0x7465646279746573ull) {}

  // Absorbs 8 message bytes (little-endian).
  void Word(uint64_t m) {
    v3_ ^= m;
    Round();
    Round();
    v0_ ^= m;
  }

  // Absorbs the last total_len % 8 bytes (tail, little-endian, higher bytes zero) and the length.
  Digest Finish(uint64_t tail, uint64_t total_len) {
    Word(tail | (total_len << 56));
    v2_ ^= 0xee;
    for (int i = 0; i < 4; ++i) Round();
    Digest out;
    out.lo = v0_ ^ v1_ ^ v2_ ^ v3_;
    v1_ ^= 0xdd;
    for (int i = 0; i < 4; ++i) Round();
    out.hi = v0_ ^ v1_ ^ v2_ ^ v3_;
    return out;
  }

 private:
  static uint64_t Rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }
  void Round() {
    v0_ += v1_;
    v1_ = Rotl(v1_, 13);
    v1_ ^= v0_;
    v0_ = Rotl(v0_, 32);
    v2_ += v3_;
    v3_ = Rotl(v3_, 16);
    v3_ ^= v2_;
    v0_ += v3_;
    v3_ = Rotl(v3_, 21);
    v3_ ^= v0_;
    v2_ += v1_;
    v1_ = Rotl(v1_, 17);
    v1_ ^= v2_;
    v2_ = Rotl(v2_, 32);
  }

  uint64_t v0_, v1_, v2_, v3_;
};

// SipHash-2-4-128 of data[0, len).
inline Digest Hash(const Key& key, const uint8_t* data, size_t len) {
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "SipHash words are little-endian");
  Sip24 sip(key);
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t m;
    std::memcpy(&m, data + i, 8);
    sip.Word(m);
  }
  uint64_t tail = 0;
  std::memcpy(&tail, data + i, len - i);
  return sip.Finish(tail, len);
}

}  // namespace ferrum_kv::siphash
