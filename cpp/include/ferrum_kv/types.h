// Vocabulary types shared by every component.
#pragma once

#include <cstdint>
#include <string>

namespace ferrum_kv {

// A physical block: an index in [0, num_blocks) of a BlockPool / KvStorage.
using BlockId = int32_t;
inline constexpr BlockId kNullBlock = -1;

// Largest pool we accept: block ids and slots must stay well inside int32/int64 arithmetic.
inline constexpr int64_t kMaxBlocks = int64_t{1} << 30;

// Storage element types. bfloat16 is the upper half of a float32 (stored as uint16 bits).
enum class DType : uint8_t { kFloat32, kFloat16, kBFloat16 };

inline constexpr int64_t DTypeSize(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// "float32" | "float16" | "bfloat16".
std::string DTypeName(DType dtype);
// Parses DTypeName's output; throws InvalidArgument on anything else.
DType ParseDType(const std::string& name);

}  // namespace ferrum_kv
