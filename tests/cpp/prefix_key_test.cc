#include "ferrum_kv/prefix_key.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/prefix_key_lanes.h"
#include "siphash.h"

namespace ferrum_kv {
namespace {

constexpr siphash::Key kReferenceKey = {0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull};

std::string Hex(const siphash::Digest& d) {
  uint8_t bytes[16];
  std::memcpy(bytes, &d.lo, 8);
  std::memcpy(bytes + 8, &d.hi, 8);
  std::string hex;
  char byte[3];
  for (uint8_t b : bytes) {
    std::snprintf(byte, sizeof byte, "%02x", b);
    hex += byte;
  }
  return hex;
}

// vectors_sip128 of the reference implementation (github.com/veorq/SipHash, vectors.h): key
// 00 01 .. 0f, message 00 01 .. (len - 1).
TEST(SipHashTest, ReferenceVectors) {
  const std::pair<size_t, const char*> vectors[] = {
      {0, "a3817f04ba25a8e66df67214c7550293"},  {1, "da87c1d86b99af44347659119b22fc45"},
      {7, "a1f1ebbed8dbc153c0b84aa61ff08239"},  {8, "3b62a9ba6258f5610f83e264f31497b4"},
      {9, "264499060ad9baabc47f8b02bb6d71ed"},  {15, "5493e99933b0a8117e08ec0f97cfc3d9"},
      {16, "6ee2a4ca67b054bbfd3315bf85230577"}, {63, "5150d1772f50834a503e069a973fbd7c"},
  };
  uint8_t message[64];
  for (int i = 0; i < 64; ++i) message[i] = uint8_t(i);
  for (const auto& [len, expected] : vectors) {
    EXPECT_EQ(Hex(siphash::Hash(kReferenceKey, message, len)), expected) << "len " << len;
  }
}

// The chain is SipHash over the documented byte strings, for odd and even block sizes.
TEST(PrefixKeyTest, ChainIsSipHashOfParentAndTokens) {
  const PrefixKeyer keyer(kReferenceKey.k0, kReferenceKey.k1);
  std::mt19937 rng(7);
  for (int32_t block_size : {1, 5, 16}) {
    std::vector<int32_t> tokens(size_t(3 * block_size));
    for (int32_t& t : tokens) t = int32_t(rng() >> 1);
    const PrefixKey root = keyer.Root("tenant");
    const std::string root_message = std::string("ferrum-kv/v1") + "tenant";
    const siphash::Digest root_digest = siphash::Hash(
        kReferenceKey, reinterpret_cast<const uint8_t*>(root_message.data()), root_message.size());
    EXPECT_EQ(root, (PrefixKey{root_digest.lo, root_digest.hi}));

    std::vector<PrefixKey> keys(3);
    keyer.Chain(root, tokens.data(), 3, block_size, keys.data());
    PrefixKey parent = root;
    for (int b = 0; b < 3; ++b) {
      std::vector<uint8_t> message(16 + 4 * size_t(block_size));
      std::memcpy(message.data(), &parent.lo, 8);
      std::memcpy(message.data() + 8, &parent.hi, 8);
      std::memcpy(message.data() + 16, tokens.data() + b * block_size, 4 * size_t(block_size));
      const siphash::Digest d = siphash::Hash(kReferenceKey, message.data(), message.size());
      EXPECT_EQ(keys[b], (PrefixKey{d.lo, d.hi})) << "block_size " << block_size << " block " << b;
      parent = keys[b];
    }
  }
}

TEST(PrefixKeyTest, KeysDependOnSecretNamespaceAndEveryEarlierToken) {
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<int32_t> changed = tokens;
  changed[1] = 9;  // block 0 differs: so does every later key
  const PrefixKeyer keyer(1, 2);
  PrefixKey a[2], b[2], c[2], d[2];
  keyer.Chain(keyer.Root(""), tokens.data(), 2, 4, a);
  keyer.Chain(keyer.Root(""), changed.data(), 2, 4, b);
  keyer.Chain(keyer.Root("x"), tokens.data(), 2, 4, c);
  PrefixKeyer(1, 3).Chain(PrefixKeyer(1, 3).Root(""), tokens.data(), 2, 4, d);
  for (int i = 0; i < 2; ++i) {
    EXPECT_NE(a[i], b[i]);
    EXPECT_NE(a[i], c[i]);
    EXPECT_NE(a[i], d[i]);
  }
  PrefixKey again[2];
  keyer.Chain(keyer.Root(""), tokens.data(), 2, 4, again);
  EXPECT_EQ(a[1], again[1]);
  EXPECT_NE(PrefixKeyer().Root(""), PrefixKeyer().Root(""));  // random secrets
}

// ChainMany (and the AVX-512 lanes directly, where the CPU has them) against Chain per job: job
// counts below, at and above the 8 lanes, chains of 0 to 40 blocks (lanes refill at different
// times), odd and even block sizes.
TEST(PrefixKeyTest, ChainManyEqualsChainPerJob) {
  const PrefixKeyer keyer(11, 12);
  std::mt19937 rng(5);
  for (int32_t block_size : {1, 2, 5, 16, 17}) {
    for (int n : {1, 2, 7, 8, 9, 25}) {
      const size_t count = static_cast<size_t>(n);
      std::vector<std::vector<int32_t>> tokens(count);
      std::vector<KeyChainJob> jobs(count);
      std::vector<std::vector<PrefixKey>> expected(count), got(count), direct(count);
      for (int j = 0; j < n; ++j) {
        const int64_t blocks = rng() % 41;
        tokens[j].resize(size_t(blocks * block_size));
        for (int32_t& t : tokens[j]) t = int32_t(rng() >> 1);
        const PrefixKey parent{rng(), rng()};
        expected[j].resize(size_t(blocks));
        got[j].resize(size_t(blocks));
        direct[j].resize(size_t(blocks));
        keyer.Chain(parent, tokens[j].data(), blocks, block_size, expected[j].data());
        jobs[j] = KeyChainJob{parent, tokens[j].data(), blocks, got[j].data()};
      }
      keyer.ChainMany(jobs.data(), n, block_size);
      for (int j = 0; j < n; ++j) {
        ASSERT_EQ(got[j], expected[j]) << "block_size " << block_size << " n " << n << " job " << j;
      }
      if (!kernels::KeyLanesAvx512Supported()) continue;
      for (int j = 0; j < n; ++j) jobs[j].out = direct[j].data();
      kernels::ChainManyAvx512(11, 12, jobs.data(), n, block_size);
      for (int j = 0; j < n; ++j) ASSERT_EQ(direct[j], expected[j]) << "lanes, job " << j;
    }
  }
}

}  // namespace
}  // namespace ferrum_kv
