#include "available_memory.h"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

namespace ferrum_kv {
namespace {

constexpr int64_t kUnknown = std::numeric_limits<int64_t>::max();

// Bytes of the given /proc/meminfo fields (values in kB) added up; kUnknown if any is missing.
int64_t MemInfoBytes(std::initializer_list<const char*> fields) {
  std::ifstream meminfo("/proc/meminfo");
  if (!meminfo) return kUnknown;
  int64_t total = 0;
  size_t found = 0;
  std::string line;
  while (std::getline(meminfo, line)) {
    for (const char* field : fields) {
      const std::string prefix = std::string(field) + ":";
      if (line.compare(0, prefix.size(), prefix) != 0) continue;
      std::istringstream value(line.substr(prefix.size()));
      int64_t kib = 0;
      if (!(value >> kib) || kib < 0 || kib > kUnknown / 1024 - total / 1024) return kUnknown;
      total += kib * 1024;
      ++found;
    }
  }
  return found == fields.size() ? total : kUnknown;
}

// A number in a cgroup file ("max" or unreadable: kUnknown).
int64_t CgroupValue(const char* path) {
  std::ifstream file(path);
  int64_t value = 0;
  if (!file || !(file >> value) || value < 0) return kUnknown;
  return value;
}

// The cgroup's inactive page cache (memory.stat "inactive_file"), which the kernel reclaims
// before it fails an allocation; 0 if unreadable.
int64_t CgroupReclaimable() {
  std::ifstream stat("/sys/fs/cgroup/memory.stat");
  std::string key;
  int64_t value = 0;
  while (stat >> key >> value) {
    if (key == "inactive_file") return std::max<int64_t>(value, 0);
  }
  return 0;
}

}  // namespace

int64_t AvailableMemoryBytes() {
  const int64_t system = MemInfoBytes({"MemAvailable", "SwapFree"});
  const int64_t limit = CgroupValue("/sys/fs/cgroup/memory.max");
  const int64_t used = CgroupValue("/sys/fs/cgroup/memory.current");
  const int64_t cgroup =
      limit == kUnknown || used == kUnknown
          ? kUnknown
          : std::max<int64_t>(limit - std::max<int64_t>(used - CgroupReclaimable(), 0), 0);
  return std::min(system, cgroup);
}

}  // namespace ferrum_kv
