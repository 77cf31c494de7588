// The storage tiers' C++ parts: the checksum and MAC primitives, TierCodec, BlockExportQueue, and
// the cache manager's hooks (pinned tier writes, imports from a tier).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ferrum_kv/block_export.h"
#include "ferrum_kv/cache_manager.h"
#include "ferrum_kv/errors.h"
#include "ferrum_kv/parallel.h"
#include "ferrum_kv/tier_codec.h"
#include "hmac_sha256.h"
#include "xxhash64.h"

namespace ferrum_kv {
namespace {

std::vector<uint8_t> Bytes(const std::string& s) { return {s.begin(), s.end()}; }

std::string Hex(const uint8_t* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}

TEST(Xxh64Test, MatchesTheReferenceImplementation) {
  // Values from the reference implementation (python-xxhash 3.x, xxh64_intdigest, seed 0).
  EXPECT_EQ(Xxh64(nullptr, 0), 0xef46db3751d8e999ull);
  const std::vector<uint8_t> a = Bytes("a");
  EXPECT_EQ(Xxh64(a.data(), a.size()), 0xd24ec4f1a98c6e5bull);
  const std::vector<uint8_t> abc = Bytes("abc");
  EXPECT_EQ(Xxh64(abc.data(), abc.size()), 0x44bc2cf5ad770999ull);
  const std::vector<uint8_t> s46 = Bytes("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ");
  EXPECT_EQ(Xxh64(s46.data(), s46.size()), 0xb35e125dd4555e6dull);
  std::vector<uint8_t> long_input;
  for (int r = 0; r < 3; ++r)
    for (int i = 0; i < 256; ++i) long_input.push_back(uint8_t(i));
  for (char c : std::string("xyz")) long_input.push_back(uint8_t(c));
  EXPECT_EQ(Xxh64(long_input.data(), long_input.size()), 0xe921a1b45bd779f8ull);
}

TEST(Xxh64Test, CopyWritesTheBytesItHashes) {
  // Every length class of the tail (8-, 4- and 1-byte steps) and of the 32-byte lanes.
  std::mt19937 rng(5);
  for (size_t len : {size_t(0), size_t(1), size_t(3), size_t(4), size_t(7), size_t(8),
                     size_t(31), size_t(32), size_t(33), size_t(45), size_t(1001),
                     size_t(4096)}) {
    std::vector<uint8_t> src(len);
    for (uint8_t& b : src) b = uint8_t(rng());
    std::vector<uint8_t> out(len + 1, 0xAB);  // the byte after out's len must stay
    EXPECT_EQ(Xxh64Copy(src.data(), len, out.data()), Xxh64(src.data(), len)) << len;
    EXPECT_EQ(Xxh64Copy(src.data(), len, out.data(), 99), Xxh64(src.data(), len, 99)) << len;
    EXPECT_TRUE(std::equal(src.begin(), src.end(), out.begin())) << len;
    EXPECT_EQ(out[len], 0xAB) << len;
  }
}

TEST(HmacSha256Test, Rfc4231Vectors) {
  uint8_t mac[32];
  const std::string key1(20, '\x0b');
  const std::vector<uint8_t> data1 = Bytes("Hi There");
  const std::pair<const uint8_t*, size_t> parts1[] = {{data1.data(), data1.size()}};
  HmacSha256(key1, parts1, 1, mac);
  EXPECT_EQ(Hex(mac, 32), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  // Test case 2, the message in three parts of odd lengths.
  const std::vector<uint8_t> data2 = Bytes("what do ya want for nothing?");
  const std::pair<const uint8_t*, size_t> parts2[] = {
      {data2.data(), 3}, {data2.data() + 3, 20}, {data2.data() + 23, data2.size() - 23}};
  HmacSha256("Jefe", parts2, 3, mac);
  EXPECT_EQ(Hex(mac, 32), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  // Test case 6: a key longer than a block is hashed first.
  const std::vector<uint8_t> data6 = Bytes("Test Using Larger Than Block-Size Key - Hash Key First");
  const std::pair<const uint8_t*, size_t> parts6[] = {{data6.data(), data6.size()}};
  HmacSha256(std::string(131, '\xaa'), parts6, 1, mac);
  EXPECT_EQ(Hex(mac, 32), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

BlockHash HashOf(uint8_t seed) {
  BlockHash h;
  for (size_t i = 0; i < h.size(); ++i) h[i] = uint8_t(seed * 31 + i);
  return h;
}

std::vector<uint8_t> SealedValue(const TierCodec& codec, const BlockHash& hash, uint32_t seed) {
  std::vector<uint8_t> value(size_t(codec.value_bytes()));
  std::mt19937 rng(seed);
  for (int64_t i = kTierHeaderBytes; i < codec.value_bytes(); ++i) value[size_t(i)] = uint8_t(rng());
  codec.Seal(hash, value.data());
  return value;
}

TEST(TierCodecTest, OpensWhatItSealsAndRejectsEveryMismatch) {
  const std::string fp(16, 'f');
  for (const std::string secret : {std::string(), std::string("shared secret")}) {
    const TierCodec codec(fp, 1001, secret);
    const BlockHash hash = HashOf(1);
    std::vector<uint8_t> value = SealedValue(codec, hash, 7);
    EXPECT_EQ(codec.Open(hash, value.data(), int64_t(value.size())), TierValueStatus::kOk);
    EXPECT_EQ(codec.Open(HashOf(2), value.data(), int64_t(value.size())),
              TierValueStatus::kWrongBlock);
    EXPECT_EQ(codec.Open(hash, value.data(), int64_t(value.size()) - 1),
              TierValueStatus::kMalformed);
    const TierCodec other_fp(std::string(16, 'g'), 1001, secret);
    EXPECT_EQ(other_fp.Open(hash, value.data(), int64_t(value.size())), TierValueStatus::kForeign);
    const TierCodec other_size(fp, 1000, secret);
    EXPECT_EQ(other_size.Open(hash, value.data(), int64_t(value.size()) - 1),
              TierValueStatus::kMalformed);
    std::vector<uint8_t> corrupt = value;
    corrupt[kTierHeaderBytes + 500] ^= 1;
    EXPECT_EQ(codec.Open(hash, corrupt.data(), int64_t(corrupt.size())),
              TierValueStatus::kBadChecksum);
    corrupt = value;
    corrupt[0] = 'X';
    EXPECT_EQ(codec.Open(hash, corrupt.data(), int64_t(corrupt.size())),
              TierValueStatus::kMalformed);
    if (!secret.empty()) {
      // A writer without the secret: a consistent value (checksum right) under a wrong MAC.
      const TierCodec forger(fp, 1001, "guess");
      std::vector<uint8_t> forged = SealedValue(forger, hash, 8);
      EXPECT_EQ(codec.Open(hash, forged.data(), int64_t(forged.size())),
                TierValueStatus::kUnauthenticated);
      // Nor can it strip the MAC: the flags say what the reader expects.
      const TierCodec plain(fp, 1001, "");
      forged = SealedValue(plain, hash, 8);
      EXPECT_EQ(codec.Open(hash, forged.data(), int64_t(forged.size())),
                TierValueStatus::kMalformed);
    }
  }
  EXPECT_THROW(TierCodec("short", 10, ""), InvalidArgument);
  EXPECT_THROW(TierCodec(fp, 0, ""), InvalidArgument);
}

TEST(TierCodecTest, HeaderAndCopiedPayloadCheckedApart) {
  const std::string fp(16, 'f');
  for (const std::string secret : {std::string(), std::string("shared secret")}) {
    const TierCodec codec(fp, 1001, secret);
    const BlockHash hash = HashOf(3);
    const std::vector<uint8_t> value = SealedValue(codec, hash, 9);
    const uint8_t* payload = value.data() + kTierHeaderBytes;
    EXPECT_EQ(codec.OpenHeader(hash, value.data(), int64_t(value.size())), TierValueStatus::kOk);
    EXPECT_EQ(codec.OpenHeader(HashOf(4), value.data(), int64_t(value.size())),
              TierValueStatus::kWrongBlock);
    std::vector<uint8_t> out(1001);
    EXPECT_EQ(codec.CopyPayload(value.data(), payload, out.data()), TierValueStatus::kOk);
    EXPECT_TRUE(std::equal(out.begin(), out.end(), payload));
    EXPECT_EQ(codec.CheckPayload(value.data(), payload), TierValueStatus::kOk);
    // The header passes alone; the damaged payload fails as it is copied.
    std::vector<uint8_t> corrupt = value;
    corrupt[kTierHeaderBytes + 1000] ^= 0x80;
    EXPECT_EQ(codec.OpenHeader(hash, corrupt.data(), int64_t(corrupt.size())),
              TierValueStatus::kOk);
    EXPECT_EQ(codec.CopyPayload(corrupt.data(), corrupt.data() + kTierHeaderBytes, out.data()),
              TierValueStatus::kBadChecksum);
    EXPECT_EQ(codec.CheckPayload(corrupt.data(), corrupt.data() + kTierHeaderBytes),
              TierValueStatus::kBadChecksum);
    if (!secret.empty()) {
      const std::vector<uint8_t> forged = SealedValue(TierCodec(fp, 1001, "guess"), hash, 9);
      EXPECT_EQ(codec.CopyPayload(forged.data(), forged.data() + kTierHeaderBytes, out.data()),
                TierValueStatus::kUnauthenticated);
    }
  }
}

TEST(BlockExportQueueTest, BoundedFifoWithInFlightBlocks) {
  BlockExportQueue q(3);
  EXPECT_TRUE(q.Offer(5, HashOf(5)));
  EXPECT_TRUE(q.Offer(6, HashOf(6)));
  BlockId blocks[4];
  BlockHash hashes[4];
  EXPECT_EQ(q.Take(1, blocks, hashes), 1);
  EXPECT_EQ(blocks[0], 5);
  EXPECT_EQ(hashes[0], HashOf(5));
  EXPECT_TRUE(q.Offer(7, HashOf(7)));
  EXPECT_FALSE(q.Offer(8, HashOf(8)));  // 2 pending + 1 in flight
  EXPECT_EQ(q.skipped(), 1);
  q.CheckInvariants();
  std::vector<int32_t> pins(10, 0);
  q.CountPins(&pins);
  EXPECT_EQ(pins, (std::vector<int32_t>{0, 0, 0, 0, 0, 1, 1, 1, 0, 0}));
  q.Finish(blocks, 1);
  EXPECT_EQ(q.Take(4, blocks, hashes), 2);
  EXPECT_EQ(blocks[0], 6);
  EXPECT_EQ(blocks[1], 7);
  q.Finish(blocks, 2);
  EXPECT_EQ(q.pending() + q.in_flight(), 0);
  EXPECT_EQ(q.exported(), 3);
  EXPECT_EQ(q.offered(), 3);
  EXPECT_THROW(BlockExportQueue(0), InvalidArgument);
}

CacheConfig TierConfig(int32_t num_blocks) {
  CacheConfig c;
  c.num_layers = 2;
  c.num_kv_heads = 2;
  c.head_dim = 4;
  c.block_size = 4;
  c.num_blocks = num_blocks;
  c.enable_prefix_caching = true;
  return c;
}

std::vector<int32_t> Tokens(int32_t n, int32_t base) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) t[size_t(i)] = base + i;
  return t;
}

TEST(TierHooksTest, PublishedBlocksArePinnedUntilCopiedOut) {
  PagedKvCache cache(TierConfig(4), 8);
  const std::vector<int32_t> tokens = Tokens(9, 100);  // two full blocks and one token
  cache.AddSequence(1, tokens.data(), 9);
  std::memset(cache.storage()->BlockData(cache.BlockTable(1)[0]), 0x11,
              size_t(cache.storage()->bytes_per_block()));
  cache.FreeSequence(1, 9);  // publishes both full blocks
  cache.CheckInvariants();
  CacheStats s = cache.Stats();
  EXPECT_EQ(s.cached_blocks, 2);
  EXPECT_EQ(s.evictable_blocks, 0);  // pinned by the queue
  EXPECT_EQ(s.tier_writes_queued, 2);
  EXPECT_EQ(s.tier_write_queue, 2);
  // Only the two free blocks can be had: the pinned ones are not evictable.
  EXPECT_FALSE(cache.CanAllocate(12));
  EXPECT_THROW(cache.AddSequence(2, Tokens(12, 0).data(), 12), OutOfBlocksError);
  cache.CheckInvariants();
  BlockId blocks[4];
  BlockHash hashes[4];
  EXPECT_EQ(cache.TakeExports(4, blocks, hashes), 2);
  cache.CheckInvariants();  // in flight: still pinned
  BlockHash expected[2];
  HashBlocks(RootHash(nullptr, 0), tokens.data(), 2, 4, expected);
  EXPECT_EQ(hashes[0], expected[0]);
  EXPECT_EQ(hashes[1], expected[1]);
  EXPECT_EQ(cache.storage()->BlockData(blocks[0])[0], 0x11);
  cache.FinishExports(blocks, 2);
  cache.CheckInvariants();
  s = cache.Stats();
  EXPECT_EQ(s.evictable_blocks, 2);
  EXPECT_EQ(s.tier_write_queue, 0);
  EXPECT_TRUE(cache.CanAllocate(12));
}

TEST(TierHooksTest, ResetAndFullQueueNeverLeakPins) {
  PagedKvCache cache(TierConfig(16), 2);
  const std::vector<int32_t> tokens = Tokens(17, 0);  // four full blocks
  cache.AddSequence(1, tokens.data(), 17);
  cache.MarkComputed(1, 17);
  CacheStats s = cache.Stats();
  EXPECT_EQ(s.tier_writes_queued, 2);
  EXPECT_EQ(s.tier_writes_skipped, 2);
  cache.CheckInvariants();
  cache.ResetPrefixCache();  // the pinned blocks leave the index but stay pinned
  cache.FreeSequence(1);
  cache.CheckInvariants();
  BlockId blocks[2];
  BlockHash hashes[2];
  EXPECT_EQ(cache.TakeExports(2, blocks, hashes), 2);
  cache.FinishExports(blocks, 2);
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().free_blocks, 16);
}

TEST(TierHooksTest, ImportFillsTheBlocksAfterTheDeviceHits) {
  PagedKvCache cache(TierConfig(16), 8);
  const int64_t bpb = cache.storage()->bytes_per_block();
  const std::vector<int32_t> tokens = Tokens(14, 7);  // three full blocks, the last one partial
  // Device: block 0 cached.
  cache.AddSequence(1, tokens.data(), 5);
  cache.FreeSequence(1, 5);
  BlockId drained[8];
  BlockHash drained_hashes[8];
  cache.FinishExports(drained, cache.TakeExports(8, drained, drained_hashes));
  std::vector<std::vector<uint8_t>> payload(3, std::vector<uint8_t>(size_t(bpb)));
  std::vector<const uint8_t*> pointers;
  for (size_t b = 0; b < 3; ++b) {
    for (size_t i = 0; i < payload[b].size(); ++i) payload[b][i] = uint8_t(b * 50 + i);
    pointers.push_back(payload[b].data());
  }
  // The tier holds blocks 1 and 2.
  BlockImport import{1, 2, pointers.data()};
  EXPECT_EQ(cache.ImportBlocks(tokens.data(), 14, "", import), 2);
  cache.CheckInvariants();
  CacheStats s = cache.Stats();
  EXPECT_EQ(s.tier_blocks_imported, 2);
  EXPECT_EQ(s.tier_write_queue, 0);  // imported blocks are not written back
  EXPECT_EQ(s.cached_blocks, 3);     // published, held by no sequence
  EXPECT_EQ(s.evictable_blocks, 3);
  EXPECT_EQ(cache.CachedPrefixLen(tokens.data(), 14), 12);
  EXPECT_EQ(cache.AddSequence(2, tokens.data(), 14), 12);
  cache.CheckInvariants();
  const std::vector<BlockId> table = cache.BlockTable(2);
  EXPECT_EQ(std::memcmp(cache.storage()->BlockData(table[1]), payload[0].data(), size_t(bpb)), 0);
  EXPECT_EQ(std::memcmp(cache.storage()->BlockData(table[2]), payload[1].data(), size_t(bpb)), 0);
  // An import that does not continue the device hits, or covers them only, changes nothing.
  const std::vector<int32_t> other = Tokens(14, 1000);
  EXPECT_EQ(cache.ImportBlocks(other.data(), 14, "", BlockImport{1, 2, pointers.data()}), 0);
  EXPECT_EQ(cache.ImportBlocks(tokens.data(), 14, "", BlockImport{0, 2, pointers.data()}), 0);
  cache.CheckInvariants();
  EXPECT_EQ(cache.Stats().tier_blocks_imported, 2);
  // Past the full blocks of the prompt: an error, nothing changes.
  EXPECT_THROW(cache.ImportBlocks(tokens.data(), 14, "", BlockImport{1, 3, pointers.data()}),
               InvalidArgument);
  // With too few blocks, as many as fit; the device hits are never evicted for them.
  PagedKvCache small(TierConfig(3), 8);
  small.AddSequence(1, tokens.data(), 5);
  small.FreeSequence(1, 5);  // block 0 cached (pinned, then unpinned below)
  small.FinishExports(drained, small.TakeExports(8, drained, drained_hashes));
  const std::vector<int32_t> filler = Tokens(4, 5000);
  small.AddSequence(2, filler.data(), 4);  // holds one block: one free, block 0 evictable
  EXPECT_EQ(small.ImportBlocks(tokens.data(), 14, "", BlockImport{1, 2, pointers.data()}), 1);
  small.CheckInvariants();
  EXPECT_EQ(small.CachedPrefixLen(tokens.data(), 14), 8);
}

TEST(TierHooksTest, ImportStopsAtTheFirstBlockItsCopyRejects) {
  const int32_t previous = DefaultNumThreads();
  for (int32_t threads : {1, 2}) {
    SetDefaultNumThreads(threads);
    PagedKvCache cache(TierConfig(16), 8);
    const int64_t bpb = cache.storage()->bytes_per_block();
    const std::vector<int32_t> tokens = Tokens(17, 11);  // four full blocks
    std::vector<std::vector<uint8_t>> payload(4, std::vector<uint8_t>(size_t(bpb)));
    std::vector<const uint8_t*> pointers;
    for (size_t b = 0; b < 4; ++b) {
      for (size_t i = 0; i < payload[b].size(); ++i) payload[b][i] = uint8_t(b * 70 + i + 1);
      pointers.push_back(payload[b].data());
    }
    const int64_t free_before = cache.Stats().free_blocks;
    BlockImport import{0, 4, pointers.data()};
    std::vector<int> calls(4, 0);
    import.copy = [&](int64_t i, uint8_t* block) {
      ++calls[size_t(i)];
      std::memcpy(block, pointers[size_t(i)], size_t(bpb));
      return i != 2;  // block 2 is bad: blocks 0 and 1 only
    };
    EXPECT_EQ(cache.ImportBlocks(tokens.data(), 17, "", import), 2);
    cache.CheckInvariants();
    for (int c : calls) EXPECT_EQ(c, 1);
    CacheStats s = cache.Stats();
    EXPECT_EQ(s.cached_blocks, 2);
    EXPECT_EQ(s.free_blocks + s.evictable_blocks, free_before);  // the rejected ones came back
    EXPECT_EQ(cache.CachedPrefixLen(tokens.data(), 17), 8);
    EXPECT_EQ(cache.AddSequence(1, tokens.data(), 17), 8);
    cache.CheckInvariants();
    const std::vector<BlockId> table = cache.BlockTable(1);
    EXPECT_EQ(std::memcmp(cache.storage()->BlockData(table[1]), payload[1].data(), size_t(bpb)),
              0);
    // The first block rejected: nothing published.
    PagedKvCache other(TierConfig(16), 8);
    import.copy = [&](int64_t, uint8_t*) { return false; };
    EXPECT_EQ(other.ImportBlocks(tokens.data(), 17, "", import), 0);
    other.CheckInvariants();
    EXPECT_EQ(other.Stats().free_blocks, 16);
  }
  SetDefaultNumThreads(previous);
}

TEST(TierHooksTest, NeedsPrefixCaching) {
  CacheConfig c = TierConfig(4);
  c.enable_prefix_caching = false;
  EXPECT_THROW(PagedKvCache(c, 4), InvalidArgument);
  EXPECT_THROW(PagedKvCache(TierConfig(4), -1), InvalidArgument);
}

}  // namespace
}  // namespace ferrum_kv
