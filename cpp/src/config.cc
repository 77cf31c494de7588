#include "ferrum_kv/config.h"

#include <cmath>
#include <cstdint>

#include "ferrum_kv/kv_format.h"
#include "ferrum_kv/support/check.h"

namespace ferrum_kv {

std::string DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kInt8: return "int8";
    case DType::kFp8E4M3: return "fp8_e4m3";
    case DType::kFp8E5M2: return "fp8_e5m2";
    case DType::kInt4: return "int4";
  }
  return "unknown";
}

DType ParseDType(const std::string& name) {
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt8,
                      DType::kFp8E4M3, DType::kFp8E5M2, DType::kInt4}) {
    if (name == DTypeName(dtype)) return dtype;
  }
  if (name == "fp8") return DType::kFp8E4M3;
  FKV_THROW(InvalidArgument, "dtype must be 'float32', 'float16', 'bfloat16', 'int8', 'fp8_e4m3' "
                             "(or 'fp8'), 'fp8_e5m2' or 'int4', got '"
                                 << name << "'");
}

int64_t CacheConfig::HeadRegionBytes() const {
  return HeadRegion(dtype, head_dim, block_size).bytes;
}

void CacheConfig::Validate() const {
  FKV_CHECK_ARG(num_layers >= 1, "num_layers must be >= 1, got " << num_layers);
  FKV_CHECK_ARG(num_kv_heads >= 1, "num_kv_heads must be >= 1, got " << num_kv_heads);
  FKV_CHECK_ARG(head_dim >= 1, "head_dim must be >= 1, got " << head_dim);
  FKV_CHECK_ARG(block_size >= 1, "block_size must be >= 1, got " << block_size);
  FKV_CHECK_ARG(num_blocks >= 1 && num_blocks <= kMaxBlocks,
                "num_blocks must be in [1, " << kMaxBlocks << "], got " << num_blocks);
  FKV_CHECK_ARG(num_host_blocks >= 0 && num_host_blocks <= kMaxBlocks,
                "num_host_blocks must be in [0, " << kMaxBlocks << "], got " << num_host_blocks);
  FKV_CHECK_ARG(std::isfinite(high_watermark) && high_watermark >= 0 && high_watermark <= 1,
                "high_watermark must be in [0, 1], got " << high_watermark);
  FKV_CHECK_ARG(std::isfinite(critical_watermark) && critical_watermark >= 0 &&
                    critical_watermark <= high_watermark,
                "critical_watermark must be in [0, high_watermark=" << high_watermark
                                                                    << "], got "
                                                                    << critical_watermark);
  FKV_CHECK_ARG(!enable_kv_events || enable_prefix_caching,
                "enable_kv_events=True needs enable_prefix_caching=True (events describe the "
                "prefix cache)");
  FKV_CHECK_ARG(max_prompt_logits >= 0,
                "max_prompt_logits must be >= 0, got " << max_prompt_logits);
  FKV_CHECK_ARG(max_prompt_logits == 0 || enable_prefix_caching,
                "max_prompt_logits > 0 needs enable_prefix_caching=True (whole-prompt hits are "
                "prefix-cache hits)");
  FKV_CHECK_ARG(int64_t{num_blocks} * block_size <= INT32_MAX &&
                    int64_t{num_host_blocks} * block_size <= INT32_MAX,
                "num_blocks * block_size must fit in int32 (slots are int32), got "
                    << num_blocks << " * " << block_size);
  // Each factor is < 2^31; bound the products in floating point before multiplying in int64.
  const double block_bytes = double(num_layers) * 2 * num_kv_heads *
                             double(HeadRegion(dtype, head_dim, block_size).bytes);
  const double max_blocks = num_blocks > num_host_blocks ? num_blocks : num_host_blocks;
  FKV_CHECK_ARG(block_bytes * max_blocks < 9.0e18,
                "cache too large: " << block_bytes << " bytes per block x " << max_blocks
                                    << " blocks overflows int64");
}

}  // namespace ferrum_kv
