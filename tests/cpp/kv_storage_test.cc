#include "ferrum_kv/kv_storage.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <thread>
#include <vector>

#include "ferrum_kv/dtype_convert.h"
#include "ferrum_kv/errors.h"

namespace ferrum_kv {
namespace {

CacheConfig SmallConfig(DType dtype) {
  CacheConfig c;
  c.num_layers = 3;
  c.num_kv_heads = 2;
  c.head_dim = 5;
  c.block_size = 4;
  c.num_blocks = 6;
  c.dtype = dtype;
  return c;
}

std::vector<float> RandomRow(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> row(n);
  for (float& x : row) x = normal(rng);
  return row;
}

TEST(KvStorageTest, ArenaIsAlignedAndSized) {
  KvStorage storage(SmallConfig(DType::kFloat32));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(storage.Data()) % KvStorage::kAlignment, 0u);
  EXPECT_EQ(storage.bytes_per_block(), 3 * 2 * 2 * 4 * 5 * 4);
  EXPECT_EQ(storage.total_bytes(), storage.bytes_per_block() * 6);
}

TEST(KvStorageTest, LargeArenaIsHugePageAligned) {
  CacheConfig config = SmallConfig(DType::kFloat32);
  config.num_blocks = int32_t(KvStorage::kHugePageBytes / (3 * 2 * 2 * 4 * 5 * 4)) + 1;
  KvStorage storage(config);
  EXPECT_GE(storage.total_bytes(), KvStorage::kHugePageBytes);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(storage.Data()) % KvStorage::kHugePageBytes, 0u);
  storage.BlockData(config.num_blocks - 1)[storage.bytes_per_block() - 1] = 1;  // all addressable
}

TEST(KvStorageTest, WriteSlotLandsAtTheDocumentedOffset) {
  const CacheConfig config = SmallConfig(DType::kFloat32);
  KvStorage storage(config);
  std::mt19937 rng(1);
  const std::vector<float> k = RandomRow(10, rng), v = RandomRow(10, rng);
  storage.WriteSlot(4, 2, 3, k.data(), v.data(), DType::kFloat32);
  const float* base = reinterpret_cast<const float*>(storage.Data());
  // [block][layer][kv][head][token][dim] with dims (6, 3, 2, 2, 4, 5)
  auto at = [&](int b, int l, int kv, int h, int t, int d) {
    return base[((((b * 3 + l) * 2 + kv) * 2 + h) * 4 + t) * 5 + d];
  };
  for (int h = 0; h < 2; ++h) {
    for (int d = 0; d < 5; ++d) {
      EXPECT_EQ(at(4, 2, 0, h, 3, d), k[h * 5 + d]);
      EXPECT_EQ(at(4, 2, 1, h, 3, d), v[h * 5 + d]);
    }
  }
  EXPECT_EQ(at(4, 2, 0, 0, 2, 0), 0.0f);  // neighbours untouched
}

TEST(KvStorageTest, RoundTripsEveryDtype) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    KvStorage storage(SmallConfig(dtype));
    std::mt19937 rng(2);
    const std::vector<float> k = RandomRow(10, rng), v = RandomRow(10, rng);
    storage.WriteSlot(1, 0, 0, k.data(), v.data(), DType::kFloat32);
    std::vector<uint8_t> k_out(10 * DTypeSize(dtype)), v_out(10 * DTypeSize(dtype));
    storage.ReadSlot(1, 0, 0, k_out.data(), v_out.data());
    std::vector<float> k_float(10), v_float(10), k_expected(10);
    ConvertToFloat32(k_out.data(), dtype, k_float.data(), 10);
    std::vector<uint8_t> rounded(10 * DTypeSize(dtype));
    ConvertFromFloat32(k.data(), dtype, rounded.data(), 10);
    ConvertToFloat32(rounded.data(), dtype, k_expected.data(), 10);
    EXPECT_EQ(k_float, k_expected) << DTypeName(dtype);
    const double tolerance = dtype == DType::kFloat32 ? 0 : dtype == DType::kFloat16 ? 1e-3 : 8e-3;
    for (int i = 0; i < 10; ++i) EXPECT_NEAR(k_float[i], k[i], tolerance * std::abs(k[i]) + 1e-6);
  }
}

TEST(KvStorageTest, RejectsBadSlots) {
  KvStorage storage(SmallConfig(DType::kFloat32));
  std::vector<float> row(10, 1.0f);
  EXPECT_THROW(storage.WriteSlot(6, 0, 0, row.data(), row.data(), DType::kFloat32),
               IndexOutOfRange);
  EXPECT_THROW(storage.WriteSlot(0, 3, 0, row.data(), row.data(), DType::kFloat32),
               IndexOutOfRange);
  EXPECT_THROW(storage.WriteSlot(0, 0, 4, row.data(), row.data(), DType::kFloat32),
               IndexOutOfRange);
  EXPECT_THROW(storage.WriteSlot(0, 0, -1, row.data(), row.data(), DType::kFloat32),
               IndexOutOfRange);
  KvStorage half(SmallConfig(DType::kFloat16));
  EXPECT_THROW(half.WriteSlot(0, 0, 0, row.data(), row.data(), DType::kBFloat16), InvalidArgument);
  EXPECT_THROW(KvStorage(SmallConfig(DType::kFloat32), 0), InvalidArgument);
}

TEST(KvStorageTest, CopyBlockCopiesEveryByte) {
  const CacheConfig config = SmallConfig(DType::kFloat16);
  KvStorage device(config), host(config, 2);
  std::mt19937 rng(5);
  for (int layer = 0; layer < 3; ++layer) {
    for (int offset = 0; offset < 4; ++offset) {
      const std::vector<float> k = RandomRow(10, rng), v = RandomRow(10, rng);
      device.WriteSlot(2, layer, offset, k.data(), v.data(), DType::kFloat32);
    }
  }
  device.CopyBlock(2, 5);
  EXPECT_EQ(0, std::memcmp(device.BlockData(2), device.BlockData(5), device.bytes_per_block()));
  KvStorage::CopyBlockBetween(device, 5, host, 1);
  KvStorage::CopyBlockBetween(host, 1, device, 0);
  EXPECT_EQ(0, std::memcmp(device.BlockData(2), device.BlockData(0), device.bytes_per_block()));
  EXPECT_THROW(device.CopyBlock(1, 1), InvalidArgument);
  EXPECT_THROW(KvStorage::CopyBlockBetween(device, 0, host, 2), IndexOutOfRange);
}

}  // namespace
}  // namespace ferrum_kv

namespace ferrum_kv {
namespace {

TEST(KvStorageConcurrentTest, SlotWritesAndBlockCopiesUnderTheBlockLocks) {
  CacheConfig config = SmallConfig(DType::kFloat32);
  config.num_blocks = 4;
  KvStorage storage(config);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&storage, t] {
      std::vector<float> k(10, float(t)), v(10, float(-t)), k_out(10), v_out(10);
      for (int i = 0; i < 2000; ++i) {
        const BlockId block = BlockId((t + i) % 4);
        storage.WriteSlot(block, i % 3, i % 4, k.data(), v.data(), DType::kFloat32);
        storage.ReadSlot(block, (i + 1) % 3, i % 4, k_out.data(), v_out.data());
        if (i % 50 == 0) storage.CopyBlock(block, (block + 1) % 4);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  // Every slot holds one writer's complete row: all K values equal and V == -K.
  for (BlockId block = 0; block < 4; ++block) {
    for (int layer = 0; layer < 3; ++layer) {
      for (int offset = 0; offset < 4; ++offset) {
        std::vector<float> k(10), v(10);
        storage.ReadSlot(block, layer, offset, k.data(), v.data());
        for (int i = 0; i < 10; ++i) {
          ASSERT_EQ(k[i], k[0]);
          ASSERT_EQ(v[i], -k[0]);
        }
      }
    }
  }
}

}  // namespace
}  // namespace ferrum_kv
