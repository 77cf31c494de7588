// Test budgets from the environment (FKV_FUZZ_OPS and the like: tests/fuzz_long.sh).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>

namespace ferrum_kv::fuzz {

// The integer value of environment variable name, or fallback if it is unset or empty.
inline int64_t EnvInt(const char* name, int64_t fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::stoll(value) : fallback;
}

}  // namespace ferrum_kv::fuzz
