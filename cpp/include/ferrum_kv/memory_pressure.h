// Memory pressure: how close the device tier is to running out of free blocks.
//
//   free_fraction = free_blocks / num_blocks
//   kCritical if free_fraction < critical_watermark,
//   kHigh     if free_fraction < high_watermark,
//   kLow      otherwise.
#pragma once

#include <cstdint>
#include <string>

namespace ferrum_kv {

enum class PressureLevel : uint8_t { kLow, kHigh, kCritical };

inline PressureLevel ClassifyPressure(int64_t free_blocks, int64_t num_blocks,
                                      double high_watermark, double critical_watermark) {
  const double free_fraction = double(free_blocks) / double(num_blocks);
  if (free_fraction < critical_watermark) return PressureLevel::kCritical;
  if (free_fraction < high_watermark) return PressureLevel::kHigh;
  return PressureLevel::kLow;
}

// "low" | "high" | "critical".
inline std::string PressureName(PressureLevel level) {
  switch (level) {
    case PressureLevel::kLow: return "low";
    case PressureLevel::kHigh: return "high";
    case PressureLevel::kCritical: return "critical";
  }
  return "unknown";
}

}  // namespace ferrum_kv
