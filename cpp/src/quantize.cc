#include "ferrum_kv/quantize.h"

#include <vector>

#include "ferrum_kv/dtype_convert.h"
#include "ferrum_kv/kv_format.h"
#include "ferrum_kv/support/check.h"
#include "kernels/quantize_kernels.h"

namespace ferrum_kv {
namespace {

void CheckJob(DType dtype, DType src_dtype) {
  FKV_CHECK_ARG(IsQuantized(dtype), "dtype '" << DTypeName(dtype) << "' is not quantized");
  FKV_CHECK_ARG(src_dtype == DType::kFloat32 || src_dtype == DType::kFloat16,
                "quantize input must be float32 or float16, got " << DTypeName(src_dtype));
}

AttentionIsa Resolve(AttentionIsa isa) {
  FKV_CHECK_ARG(AttentionIsaSupported(isa),
                "kernel '" << AttentionIsaName(isa) << "' is not supported by this CPU");
  return isa == AttentionIsa::kAuto ? BestAttentionIsa() : isa;
}

}  // namespace

namespace kernels {

// The portable variant: kv_format.h's scalar row functions; float16 rows are widened first.
const float* RowAsFloat(const QuantizeJob& job, int64_t r, std::vector<float>* buffer) {
  const int64_t d = job.head_dim;
  if (job.src_dtype == DType::kFloat32) return static_cast<const float*>(job.src) + r * d;
  buffer->resize(size_t(d));
  ConvertToFloat32(static_cast<const uint16_t*>(job.src) + r * d, DType::kFloat16,
                   buffer->data(), d);
  return buffer->data();
}

int64_t FindUnquantizableRowPortable(const QuantizeJob& job) {
  std::vector<float> buffer;
  for (int64_t r = 0; r < job.rows; ++r) {
    if (!RowQuantizable(job.dtype, RowAsFloat(job, r, &buffer), job.head_dim)) return r;
  }
  return -1;
}

void QuantizeRowsPortable(const QuantizeJob& job) {
  std::vector<float> buffer;
  for (int64_t r = 0; r < job.rows; ++r) {
    QuantizeRow(job.dtype, RowAsFloat(job, r, &buffer), job.head_dim,
                job.codes + r * job.codes_stride,
                reinterpret_cast<float*>(job.params + r * job.params_stride));
  }
}

}  // namespace kernels

int64_t FindUnquantizableRow(DType dtype, const void* src, DType src_dtype, int64_t rows,
                             int64_t head_dim, AttentionIsa isa) {
  CheckJob(dtype, src_dtype);
  const kernels::QuantizeJob job{dtype, src, src_dtype, rows, head_dim, nullptr, 0, nullptr, 0};
  switch (Resolve(isa)) {
    case AttentionIsa::kAmx:
    case AttentionIsa::kAvx512: return kernels::FindUnquantizableRowAvx512(job);
    case AttentionIsa::kAvx2: return kernels::FindUnquantizableRowAvx2(job);
    default: return kernels::FindUnquantizableRowPortable(job);
  }
}

void QuantizeRows(DType dtype, const void* src, DType src_dtype, int64_t rows, int64_t head_dim,
                  uint8_t* codes, int64_t codes_stride, uint8_t* params, int64_t params_stride,
                  AttentionIsa isa) {
  CheckJob(dtype, src_dtype);
  const kernels::QuantizeJob job{dtype,  src,          src_dtype, rows,         head_dim,
                                 codes,  codes_stride, params,    params_stride};
  switch (Resolve(isa)) {
    case AttentionIsa::kAmx:
    case AttentionIsa::kAvx512: return kernels::QuantizeRowsAvx512(job);
    case AttentionIsa::kAvx2: return kernels::QuantizeRowsAvx2(job);
    default: return kernels::QuantizeRowsPortable(job);
  }
}

void DequantizeRows(DType dtype, const uint8_t* codes, int64_t codes_stride,
                    const uint8_t* params, int64_t params_stride, int64_t rows, int64_t head_dim,
                    float* out) {
  CheckJob(dtype, DType::kFloat32);
  for (int64_t r = 0; r < rows; ++r) {
    DequantizeRow(dtype, codes + r * codes_stride,
                  reinterpret_cast<const float*>(params + r * params_stride), head_dim,
                  out + r * head_dim);
  }
}

}  // namespace ferrum_kv
