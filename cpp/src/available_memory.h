// How much memory an allocation can still get before the system runs out, for checks made
// before a large arena is touched (an arena zero-filled past what the machine has ends in the
// kernel's out-of-memory killer, not in an exception).
// Thread safety: reentrant (reads /proc and /sys). Errors: none; an unknown amount is reported as
// the largest int64_t.
#pragma once

#include <cstdint>

namespace ferrum_kv {

// The smaller of: MemAvailable + SwapFree (/proc/meminfo) and the cgroup v2 memory limit minus
// the cgroup's current use less its inactive page cache (/sys/fs/cgroup/memory.max,
// memory.current, memory.stat; the cgroup the process sees at that path, not its parents).
// INT64_MAX where neither can be read (non-Linux systems).
int64_t AvailableMemoryBytes();

}  // namespace ferrum_kv
