#include "fuzz/fault_injection.h"

#include <new>

namespace ferrum_kv::fuzz::fault_injection {

namespace {
// Plain thread_local integers (no constructors): Point() runs inside operator new.
thread_local int64_t armed_at = 0;  // 0: disarmed
thread_local int64_t hits = 0;
}  // namespace

void Arm(int64_t n) {
  armed_at = n;
  hits = 0;
}

int64_t Hits() { return hits; }

bool Armed() { return armed_at != 0; }

void Point() {
  if (armed_at == 0) return;
  if (++hits == armed_at) {
    armed_at = 0;  // once: the unwinding and the caller's handlers allocate normally
    throw std::bad_alloc();
  }
}

}  // namespace ferrum_kv::fuzz::fault_injection
