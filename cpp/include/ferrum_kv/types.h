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

// Storage element types. bfloat16 is the upper half of a float32 (stored as uint16 bits). The
// quantized formats (int8, fp8_e4m3, fp8_e5m2, int4) store codes plus per-row float32
// parameters; their facts and geometry are in kv_format.h.
enum class DType : uint8_t { kFloat32, kFloat16, kBFloat16, kInt8, kFp8E4M3, kFp8E5M2, kInt4 };

inline constexpr bool IsQuantized(DType dtype) {
  return dtype == DType::kInt8 || dtype == DType::kFp8E4M3 || dtype == DType::kFp8E5M2 ||
         dtype == DType::kInt4;
}

// Bytes of one element of a float dtype. Quantized dtypes have no element size (int4 packs two
// codes per byte, and rows carry parameters): 1, the size of the uint8 their codes are viewed as;
// use kv_format.h for their geometry.
inline constexpr int64_t DTypeSize(DType dtype) {
  return dtype == DType::kFloat32 ? 4 : IsQuantized(dtype) ? 1 : 2;
}

// "float32" | "float16" | "bfloat16" | "int8" | "fp8_e4m3" | "fp8_e5m2" | "int4".
std::string DTypeName(DType dtype);
// Parses DTypeName's output, and "fp8" as "fp8_e4m3"; throws InvalidArgument on anything else.
DType ParseDType(const std::string& name);

}  // namespace ferrum_kv
