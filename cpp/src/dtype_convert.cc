#include "ferrum_kv/dtype_convert.h"

#include "ferrum_kv/support/check.h"

namespace ferrum_kv {

void ConvertFromFloat32(const float* src, DType dtype, void* dst, int64_t n) {
  switch (dtype) {
    case DType::kFloat32:
      std::memcpy(dst, src, size_t(n) * sizeof(float));
      return;
    case DType::kFloat16: {
      auto* out = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) out[i] = FloatToHalfBits(src[i]);
      return;
    }
    case DType::kBFloat16: {
      auto* out = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) out[i] = FloatToBFloat16Bits(src[i]);
      return;
    }
    default:  // quantized dtypes have no element conversion: quantize.h
      FKV_THROW(InvalidArgument, "no element conversion to " << DTypeName(dtype));
  }
}

void ConvertToFloat32(const void* src, DType dtype, float* dst, int64_t n) {
  switch (dtype) {
    case DType::kFloat32:
      std::memcpy(dst, src, size_t(n) * sizeof(float));
      return;
    case DType::kFloat16: {
      const auto* in = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = HalfBitsToFloat(in[i]);
      return;
    }
    case DType::kBFloat16: {
      const auto* in = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = BFloat16BitsToFloat(in[i]);
      return;
    }
    default:  // quantized dtypes have no element conversion: quantize.h
      FKV_THROW(InvalidArgument, "no element conversion from " << DTypeName(dtype));
  }
}

}  // namespace ferrum_kv
