// A std::mutex that the clang thread-safety analysis understands, and its scoped lock.
#pragma once

#include <mutex>

#include "ferrum_kv/support/thread_annotations.h"

namespace ferrum_kv {

class FKV_CAPABILITY("mutex") Mutex {
 public:
  void Lock() FKV_ACQUIRE() { mu_.lock(); }
  void Unlock() FKV_RELEASE() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

class FKV_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex* mu) FKV_ACQUIRE(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() FKV_RELEASE() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

}  // namespace ferrum_kv
