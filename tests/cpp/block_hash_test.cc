#include "ferrum_kv/block_hash.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <string>
#include <unordered_set>
#include <vector>

#include "ferrum_kv/errors.h"
#include "sha256.h"

namespace ferrum_kv {
namespace {

std::string Hex(const uint8_t* digest) {
  std::string hex;
  char byte[3];
  for (size_t i = 0; i < sha256::kDigestBytes; ++i) {
    std::snprintf(byte, sizeof byte, "%02x", digest[i]);
    hex += byte;
  }
  return hex;
}

std::string HexSha256(const std::string& message, sha256::CompressFn compress) {
  uint8_t digest[sha256::kDigestBytes];
  sha256::Hash(reinterpret_cast<const uint8_t*>(message.data()), message.size(), compress, digest);
  return Hex(digest);
}

// Every implementation this CPU can run.
std::vector<sha256::CompressFn> Implementations() {
  std::vector<sha256::CompressFn> fns = {sha256::CompressPortable};
  if (sha256::CpuHasShaNi()) fns.push_back(sha256::CompressShaNi);
  return fns;
}

TEST(Sha256Test, FipsTestVectors) {
  for (const sha256::CompressFn compress : Implementations()) {
    EXPECT_EQ(HexSha256("abc", compress),
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_EQ(HexSha256("", compress),
              "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_EQ(HexSha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", compress),
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    EXPECT_EQ(HexSha256(std::string(1000000, 'a'), compress),
              "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  }
}

TEST(Sha256Test, ShaNiAgreesWithPortableOnEveryLength) {
  if (!sha256::CpuHasShaNi()) GTEST_SKIP() << "no SHA extensions on this CPU";
  std::mt19937 rng(7);
  for (size_t len = 0; len <= 300; ++len) {
    std::string message(len, '\0');
    for (char& c : message) c = char(rng());
    ASSERT_EQ(HexSha256(message, sha256::CompressShaNi),
              HexSha256(message, sha256::CompressPortable))
        << "length " << len;
  }
}

TEST(Sha256Test, BestCompressMatchesTheCpu) {
  EXPECT_EQ(sha256::BestCompress() == sha256::CompressShaNi, sha256::CpuHasShaNi());
  EXPECT_STREQ(Sha256Implementation(), sha256::CpuHasShaNi() ? "sha-ni" : "portable");
}

// The spec, written directly: SHA-256 over an explicitly built byte string.
BlockHash SpecHash(const BlockHash& parent, const std::vector<int32_t>& tokens, size_t begin,
                   size_t block_size) {
  std::string message(parent.begin(), parent.end());
  for (size_t i = begin; i < begin + block_size; ++i) {
    const uint32_t id = uint32_t(tokens[i]);
    for (int byte = 0; byte < 4; ++byte) message += char(id >> (8 * byte));
  }
  BlockHash hash;
  sha256::Hash(reinterpret_cast<const uint8_t*>(message.data()), message.size(),
               sha256::CompressPortable, hash.data());
  return hash;
}

TEST(BlockHashTest, RootHashIsSha256OfDomainAndNamespace) {
  const std::string ns = "tenant-a";
  const BlockHash root = RootHash(reinterpret_cast<const uint8_t*>(ns.data()), ns.size());
  EXPECT_EQ(Hex(root.data()), HexSha256("ferrum-kv/v1tenant-a", sha256::CompressPortable));
  EXPECT_EQ(Hex(RootHash(nullptr, 0).data()), HexSha256("ferrum-kv/v1", sha256::CompressPortable));
}

TEST(BlockHashTest, ChainMatchesTheSpecForManyBlockSizes) {
  std::mt19937 rng(11);
  for (const int32_t block_size : {1, 5, 7, 8, 9, 16, 23, 32, 64, 128, 600}) {
    const int64_t num_blocks = 9;
    std::vector<int32_t> tokens(num_blocks * block_size);
    for (int32_t& t : tokens) t = int32_t(rng() & 0x7fffffffu);
    tokens[0] = 0x7fffffff;
    const BlockHash root = RootHash(nullptr, 0);
    std::vector<BlockHash> chain(num_blocks);
    HashBlocks(root, tokens.data(), num_blocks, block_size, chain.data());
    BlockHash parent = root;
    for (int64_t i = 0; i < num_blocks; ++i) {
      const BlockHash expected = SpecHash(parent, tokens, i * block_size, block_size);
      ASSERT_EQ(chain[i], expected) << "block_size " << block_size << " block " << i;
      EXPECT_EQ(HashBlock(parent, tokens.data() + i * block_size, block_size), expected);
      parent = expected;
    }
  }
}

TEST(BlockHashTest, HashDependsOnEveryEarlierTokenAndTheParent) {
  std::vector<int32_t> tokens(64);
  for (int32_t i = 0; i < 64; ++i) tokens[i] = i;
  const BlockHash root = RootHash(nullptr, 0);
  std::vector<BlockHash> chain(4), changed(4);
  HashBlocks(root, tokens.data(), 4, 16, chain.data());
  tokens[20] += 1;  // block 1
  HashBlocks(root, tokens.data(), 4, 16, changed.data());
  EXPECT_EQ(changed[0], chain[0]);
  for (int i = 1; i < 4; ++i) EXPECT_NE(changed[i], chain[i]) << i;
  const uint8_t ns[] = {'x'};
  EXPECT_NE(HashBlock(RootHash(ns, 1), tokens.data(), 16), HashBlock(root, tokens.data(), 16));
}

TEST(BlockHashTest, HasherUsesTheFirstEightBytes) {
  BlockHash a{}, b{};
  b[31] = 1;  // differs only past the key
  EXPECT_EQ(BlockHashHasher()(a), BlockHashHasher()(b));
  b[0] = 1;
  EXPECT_NE(BlockHashHasher()(a), BlockHashHasher()(b));
  std::unordered_set<BlockHash, BlockHashHasher> set = {a, b};
  EXPECT_EQ(set.size(), 2u);
}

TEST(BlockHashTest, RejectsBadArgumentsBeforeWriting) {
  const std::vector<int32_t> tokens = {1, 2, 3, -4};
  const BlockHash root = RootHash(nullptr, 0);
  BlockHash out[2] = {};
  EXPECT_THROW(HashBlocks(root, tokens.data(), 2, 2, out), InvalidArgument);
  EXPECT_EQ(out[0], BlockHash{});  // all-or-nothing: block 0 was valid but not written
  EXPECT_THROW(HashBlocks(root, tokens.data(), 1, 0, out), InvalidArgument);
  EXPECT_THROW(HashBlocks(root, tokens.data(), -1, 2, out), InvalidArgument);
  EXPECT_NO_THROW(HashBlocks(root, tokens.data(), 0, 2, out));
  EXPECT_NO_THROW(HashBlocks(root, tokens.data(), 1, 3, out));
  EXPECT_NO_THROW(CheckTokenIds(tokens.data(), 0, 3));
  EXPECT_THROW(CheckTokenIds(tokens.data(), 3, 4), InvalidArgument);
}

}  // namespace
}  // namespace ferrum_kv
