#include "ferrum_kv/prompt_logits.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace ferrum_kv {
namespace {

PromptLogits Entry(uint64_t parent, std::vector<int32_t> tail, BlockId block, float logit) {
  return PromptLogits{PrefixKey{parent, parent + 1}, true, std::move(tail), block, {logit, -logit}};
}

TEST(PromptLogitsStoreTest, FindsExactTailsUnderOneParent) {
  PromptLogitsStore store(4);
  EXPECT_EQ(store.Insert(Entry(7, {1, 2}, 10, 0.5f)), kNullBlock);
  EXPECT_EQ(store.Insert(Entry(7, {1, 3}, 11, 1.5f)), kNullBlock);
  EXPECT_EQ(store.Insert(Entry(7, {}, kNullBlock, 2.5f)), kNullBlock);  // ends at a block edge
  store.CheckInvariants();
  const int32_t tail[] = {1, 2, 3};
  PromptLogits* found = store.Find(PrefixKey{7, 8}, tail, 2);
  ASSERT_NE(found, nullptr);
  EXPECT_EQ(found->tail_block, 10);
  EXPECT_EQ(found->logits, (std::vector<float>{0.5f, -0.5f}));
  EXPECT_EQ(store.Find(PrefixKey{7, 8}, tail, 3), nullptr);   // longer
  EXPECT_EQ(store.Find(PrefixKey{7, 8}, tail, 1), nullptr);   // shorter
  EXPECT_EQ(store.Find(PrefixKey{7, 9}, tail, 2), nullptr);   // another parent
  ASSERT_NE(store.Find(PrefixKey{7, 8}, tail, 0), nullptr);
  EXPECT_EQ(store.Find(PrefixKey{7, 8}, tail, 0)->logits[0], 2.5f);
  EXPECT_EQ(store.size(), 3);
}

TEST(PromptLogitsStoreTest, DropsTheLeastRecentlyUsedBeyondCapacity) {
  PromptLogitsStore store(2);
  EXPECT_EQ(store.Insert(Entry(1, {5}, 20, 1)), kNullBlock);
  EXPECT_EQ(store.Insert(Entry(2, {6}, 21, 2)), kNullBlock);
  const int32_t five = 5;
  ASSERT_NE(store.Find(PrefixKey{1, 2}, &five, 1), nullptr);  // entry 1 is now the newest use
  EXPECT_EQ(store.Insert(Entry(3, {}, kNullBlock, 3)), 21);    // drops entry 2, returns its block
  store.CheckInvariants();
  EXPECT_EQ(store.size(), 2);
  const int32_t six = 6;
  EXPECT_EQ(store.Find(PrefixKey{2, 3}, &six, 1), nullptr);
  EXPECT_EQ(store.Insert(Entry(4, {}, kNullBlock, 4)), 20);    // drops entry 1
  EXPECT_EQ(store.Insert(Entry(5, {}, kNullBlock, 5)), kNullBlock);  // drops entry 3: no block
  EXPECT_TRUE(store.TailBlocks().empty());
  store.CheckInvariants();
}

TEST(PromptLogitsStoreTest, ClearReturnsEveryTailBlock) {
  PromptLogitsStore store(3);
  store.Insert(Entry(1, {1}, 4, 0));
  store.Insert(Entry(2, {}, kNullBlock, 0));
  store.Insert(Entry(3, {2, 2}, 9, 0));
  std::vector<BlockId> blocks = store.Clear();
  std::sort(blocks.begin(), blocks.end());
  EXPECT_EQ(blocks, (std::vector<BlockId>{4, 9}));
  EXPECT_EQ(store.size(), 0);
  store.CheckInvariants();
}

}  // namespace
}  // namespace ferrum_kv
