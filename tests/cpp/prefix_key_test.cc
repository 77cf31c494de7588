#include "ferrum_kv/prefix_key.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/prefix_key_aes.h"
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

// The kSipHash chain is SipHash over the documented byte strings, for odd and even block sizes.
TEST(PrefixKeyTest, SipHashChainIsSipHashOfParentAndTokens) {
  const PrefixKeyer keyer(kReferenceKey.k0, kReferenceKey.k1, PrefixKeyer::Scheme::kSipHash);
  std::mt19937 rng(7);
  for (int32_t block_size : {1, 5, 16}) {
    std::vector<int32_t> tokens(size_t(3 * block_size));
    for (int32_t& t : tokens) t = int32_t(rng() >> 1);
    const PrefixKey root = keyer.Root("tenant");
    const std::string root_message = std::string("ferrum-kv/v1") + "tenant";
    const siphash::Digest root_digest = siphash::Hash(
        kReferenceKey, reinterpret_cast<const uint8_t*>(root_message.data()), root_message.size());
    EXPECT_EQ(root, (PrefixKey{root_digest.lo, root_digest.hi}));
    // The empty namespace's root (kept from construction) is built the same way.
    const siphash::Digest empty_digest =
        siphash::Hash(kReferenceKey, reinterpret_cast<const uint8_t*>("ferrum-kv/v1"), 12);
    EXPECT_EQ(keyer.Root(""), (PrefixKey{empty_digest.lo, empty_digest.hi}));

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

std::vector<uint8_t> FromHex(const std::string& hex) {
  std::vector<uint8_t> bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    bytes.push_back(uint8_t(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return bytes;
}

std::string ToHex(const uint8_t* bytes, size_t n) {
  std::string hex;
  char byte[3];
  for (size_t i = 0; i < n; ++i) {
    std::snprintf(byte, sizeof byte, "%02x", bytes[i]);
    hex += byte;
  }
  return hex;
}

std::vector<PrefixKeyer::Scheme> Schemes() {
  std::vector<PrefixKeyer::Scheme> schemes = {PrefixKeyer::Scheme::kSipHash};
  if (kernels::AesNiSupported()) schemes.push_back(PrefixKeyer::Scheme::kAes);
  return schemes;
}

// FIPS-197: the key expansion of Appendix A.1 and the ciphertexts of Appendices B and C.1.
TEST(AesTest, Fips197Vectors) {
  if (!kernels::AesNiSupported()) GTEST_SKIP() << "no AES-NI on this CPU";
  AesRoundKeys keys;
  kernels::AesExpandKey(FromHex("2b7e151628aed2a6abf7158809cf4f3c").data(), &keys);
  EXPECT_EQ(ToHex(keys.bytes[10], 16), "d014f9a8c9ee2589e13f0cc8b6630ca6");
  uint8_t out[16];
  kernels::AesEncryptBlock(keys, FromHex("3243f6a8885a308d313198a2e0370734").data(), out);
  EXPECT_EQ(ToHex(out, 16), "3925841d02dc09fbdc118597196a0b32");
  kernels::AesExpandKey(FromHex("000102030405060708090a0b0c0d0e0f").data(), &keys);
  kernels::AesEncryptBlock(keys, FromHex("00112233445566778899aabbccddeeff").data(), out);
  EXPECT_EQ(ToHex(out, 16), "69c4e0d86a7b0430d8cdb78070b4c55a");
}

// The kAes chain is the documented construction (kernels/prefix_key_aes.h), computed here one
// AES block at a time with the FIPS-checked primitive: keys derived from the secret by SipHash,
// token digests by CBC-MAC over zero-padded 16-byte chunks, links by one encryption.
TEST(PrefixKeyTest, AesChainIsTheDocumentedCbcMacChain) {
  if (!kernels::AesNiSupported()) GTEST_SKIP() << "no AES-NI on this CPU";
  const PrefixKeyer keyer(kReferenceKey.k0, kReferenceKey.k1, PrefixKeyer::Scheme::kAes);
  auto derive = [](const std::string& domain) {
    const siphash::Digest d = siphash::Hash(
        kReferenceKey, reinterpret_cast<const uint8_t*>(domain.data()), domain.size());
    uint8_t key[16];
    std::memcpy(key, &d.lo, 8);
    std::memcpy(key + 8, &d.hi, 8);
    AesRoundKeys out;
    kernels::AesExpandKey(key, &out);
    return out;
  };
  const AesRoundKeys token_key = derive("ferrum-kv/aes-token-key");
  const AesRoundKeys chain_key = derive("ferrum-kv/aes-chain-key");
  std::mt19937 rng(3);
  for (int32_t block_size : {1, 3, 4, 5, 8, 16, 17}) {
    std::vector<int32_t> tokens(size_t(3 * block_size));
    for (int32_t& t : tokens) t = int32_t(rng() >> 1);
    const PrefixKey root = keyer.Root("tenant");
    std::vector<PrefixKey> keys(3);
    keyer.Chain(root, tokens.data(), 3, block_size, keys.data());
    PrefixKey parent = root;
    for (int b = 0; b < 3; ++b) {
      std::vector<uint8_t> message((size_t(block_size) + 3) / 4 * 16, 0);
      std::memcpy(message.data(), tokens.data() + b * block_size, 4 * size_t(block_size));
      uint8_t digest[16] = {};
      for (size_t chunk = 0; chunk < message.size(); chunk += 16) {
        uint8_t in[16];
        for (int i = 0; i < 16; ++i) in[i] = uint8_t(digest[i] ^ message[chunk + i]);
        kernels::AesEncryptBlock(token_key, in, digest);
      }
      uint8_t link[16];
      std::memcpy(link, &parent, 16);
      for (int i = 0; i < 16; ++i) link[i] ^= digest[i];
      PrefixKey expected;
      kernels::AesEncryptBlock(chain_key, link, reinterpret_cast<uint8_t*>(&expected));
      EXPECT_EQ(keys[b], expected) << "block_size " << block_size << " block " << b;
      PrefixKey one_block;  // a chain of one block takes the one-block path
      keyer.Chain(parent, tokens.data() + b * block_size, 1, block_size, &one_block);
      EXPECT_EQ(one_block, expected) << "block_size " << block_size << " block " << b;
      parent = keys[b];
    }
  }
}

TEST(PrefixKeyTest, KeysDependOnSecretNamespaceAndEveryEarlierToken) {
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<int32_t> changed = tokens;
  changed[1] = 9;  // block 0 differs: so does every later key
  for (PrefixKeyer::Scheme scheme : Schemes()) {
    const PrefixKeyer keyer(1, 2, scheme);
    const PrefixKeyer other_secret(1, 3, scheme);
    PrefixKey a[2], b[2], c[2], d[2];
    keyer.Chain(keyer.Root(""), tokens.data(), 2, 4, a);
    keyer.Chain(keyer.Root(""), changed.data(), 2, 4, b);
    keyer.Chain(keyer.Root("x"), tokens.data(), 2, 4, c);
    other_secret.Chain(other_secret.Root(""), tokens.data(), 2, 4, d);
    for (int i = 0; i < 2; ++i) {
      EXPECT_NE(a[i], b[i]);
      EXPECT_NE(a[i], c[i]);
      EXPECT_NE(a[i], d[i]);
    }
    PrefixKey again[2];
    keyer.Chain(keyer.Root(""), tokens.data(), 2, 4, again);
    EXPECT_EQ(a[1], again[1]);
  }
  EXPECT_NE(PrefixKeyer().Root(""), PrefixKeyer().Root(""));  // random secrets
}

// The AES ChainMany (chains side by side, 8 AES streams, idle streams when jobs run out or end
// early) against one-block chains, which the construction test above checks: job counts below,
// at and above 8, chains of 0 to 40 blocks, odd and even block sizes. (The SipHash ChainMany is a
// loop over Chain.)
TEST(PrefixKeyTest, AesChainManyEqualsOneBlockChains) {
  if (!kernels::AesNiSupported()) GTEST_SKIP() << "no AES-NI on this CPU";
  std::mt19937 rng(5);
  const PrefixKeyer keyer(11, 12, PrefixKeyer::Scheme::kAes);
  for (int32_t block_size : {1, 2, 5, 16, 17}) {
    for (int n : {1, 2, 7, 8, 9, 15, 16, 17, 25, 33}) {
      const size_t count = static_cast<size_t>(n);
      std::vector<std::vector<int32_t>> tokens(count);
      std::vector<KeyChainJob> jobs(count);
      std::vector<std::vector<PrefixKey>> expected(count), got(count);
      for (int j = 0; j < n; ++j) {
        const int64_t blocks = rng() % 41;
        tokens[j].resize(size_t(blocks * block_size));
        for (int32_t& t : tokens[j]) t = int32_t(rng() >> 1);
        const PrefixKey parent{rng(), rng()};
        expected[j].resize(size_t(blocks));
        got[j].resize(size_t(blocks));
        for (int64_t b = 0; b < blocks; ++b) {  // block by block: one-block chains
          keyer.Chain(b == 0 ? parent : expected[j][b - 1], tokens[j].data() + b * block_size, 1,
                      block_size, &expected[j][b]);
        }
        jobs[j] = KeyChainJob{parent, tokens[j].data(), blocks, got[j].data()};
      }
      keyer.ChainMany(jobs.data(), n, block_size);
      for (int j = 0; j < n; ++j) {
        ASSERT_EQ(got[j], expected[j]) << "block_size " << block_size << " n " << n << " job " << j;
      }
    }
  }
}

// Jobs of one block each (the one-block path, in groups of up to 8 or 16) against the first key
// of two-block chains (the general path).
TEST(PrefixKeyTest, AesChainManyOfOneBlockJobsEqualsTheGeneralPath) {
  if (!kernels::AesNiSupported()) GTEST_SKIP() << "no AES-NI on this CPU";
  std::mt19937 rng(6);
  const PrefixKeyer keyer(13, 14, PrefixKeyer::Scheme::kAes);
  for (int32_t block_size : {1, 3, 16, 17}) {
    for (int n : {2, 7, 8, 9, 15, 16, 17, 25, 33}) {
      std::vector<int32_t> tokens(size_t((n + 1) * block_size));  // one block more for the last
      for (int32_t& t : tokens) t = int32_t(rng() >> 1);
      std::vector<KeyChainJob> jobs(static_cast<size_t>(n));
      std::vector<PrefixKey> expected(static_cast<size_t>(n)), got(static_cast<size_t>(n));
      for (int j = 0; j < n; ++j) {
        const PrefixKey parent{rng(), rng()};
        const int32_t* block = tokens.data() + j * block_size;
        PrefixKey two[2];
        keyer.Chain(parent, block, 2, block_size, two);
        expected[size_t(j)] = two[0];
        jobs[size_t(j)] = KeyChainJob{parent, block, 1, &got[size_t(j)]};
      }
      keyer.ChainMany(jobs.data(), n, block_size);
      EXPECT_EQ(got, expected) << "block_size " << block_size << " n " << n;
    }
  }
}

// The 512-bit VAES kernel (which AesChainMany picks where the CPU has it, and which the tests above
// check against the documented construction there) and the 128-bit AES-NI kernel give the same
// keys, for chains of 0 to 40 blocks and one-block jobs, in groups that fill their ways or not.
TEST(PrefixKeyTest, AesNiAndVaesKernelsAgree) {
  if (!kernels::VaesSupported()) GTEST_SKIP() << "no VAES / AVX-512 on this CPU";
  std::mt19937 rng(8);
  AesRoundKeys token_key, chain_key;
  uint8_t key[16];
  for (uint8_t& byte : key) byte = uint8_t(rng());
  kernels::AesExpandKey(key, &token_key);
  for (uint8_t& byte : key) byte = uint8_t(rng());
  kernels::AesExpandKey(key, &chain_key);
  for (int32_t block_size : {1, 3, 4, 5, 16, 17}) {
    for (int n : {1, 2, 8, 15, 16, 17, 33}) {
      for (bool one_block : {false, true}) {
        std::vector<std::vector<int32_t>> tokens(static_cast<size_t>(n));
        std::vector<std::vector<PrefixKey>> out[2];
        std::vector<KeyChainJob> jobs[2];
        for (int v = 0; v < 2; ++v) out[v].resize(size_t(n));
        for (int j = 0; j < n; ++j) {
          const int64_t blocks = one_block ? 1 : rng() % 41;
          tokens[j].resize(size_t(blocks * block_size));
          for (int32_t& t : tokens[j]) t = int32_t(rng() >> 1);
          const PrefixKey parent{rng(), rng()};
          for (int v = 0; v < 2; ++v) {
            out[v][j].resize(size_t(blocks));
            jobs[v].push_back(KeyChainJob{parent, tokens[j].data(), blocks, out[v][j].data()});
          }
        }
        kernels::AesChainManyAesNi(token_key, chain_key, jobs[0].data(), n, block_size);
        kernels::AesChainManyVaes(token_key, chain_key, jobs[1].data(), n, block_size);
        EXPECT_EQ(out[0], out[1]) << "block_size " << block_size << " n " << n
                                  << (one_block ? " one block each" : "");
      }
    }
  }
}

}  // namespace
}  // namespace ferrum_kv
