#include "ferrum_kv/support/index_list.h"

#include <gtest/gtest.h>

#include <list>
#include <random>
#include <vector>

namespace ferrum_kv {
namespace {

std::vector<int32_t> Walk(const IndexList& list) {
  std::vector<int32_t> out;
  for (int32_t i = list.empty() ? -1 : list.Front(); i != -1; i = list.Next(i)) out.push_back(i);
  return out;
}

TEST(IndexListTest, MatchesStdListUnderRandomOperations) {
  constexpr int32_t kCapacity = 32;
  IndexList list(kCapacity);
  std::list<int32_t> model;
  std::mt19937 rng(3);
  for (int step = 0; step < 5000; ++step) {
    const int32_t i = int32_t(rng() % kCapacity);
    const bool present = list.Contains(i);
    ASSERT_EQ(present, std::find(model.begin(), model.end(), i) != model.end());
    if (present) {
      list.Remove(i);
      model.remove(i);
    } else if (rng() % 2) {
      list.PushBack(i);
      model.push_back(i);
    } else {
      list.PushFront(i);
      model.push_front(i);
    }
    if (step % 11 == 0 && !list.empty()) {
      ASSERT_EQ(list.PopFront(), model.front());
      model.pop_front();
    }
    if (step % 17 == 0) {
      const int64_t n = int64_t(rng() % (model.size() + 1));
      std::vector<int32_t> popped(size_t(n) + 1, -7);
      list.PopFront(n, popped.data());
      for (int64_t k = 0; k < n; ++k) {
        ASSERT_EQ(popped[k], model.front());
        model.pop_front();
        ASSERT_FALSE(list.Contains(popped[k]));
      }
      ASSERT_EQ(popped[n], -7);  // nothing written past n
    }
    ASSERT_EQ(list.size(), int64_t(model.size()));
    ASSERT_EQ(Walk(list), std::vector<int32_t>(model.begin(), model.end()));
  }
}

}  // namespace
}  // namespace ferrum_kv
