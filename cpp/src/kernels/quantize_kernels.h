// The ISA variants behind quantize.h. Each *Avx512 / *Avx2 function lives in a file compiled for
// that instruction set (quantize_avx512.cc, quantize_avx2.cc) and must only be called on a CPU
// that has it; the portable variants (quantize.cc) run kv_format.h's scalar code. All variants
// give bit-identical results.
#pragma once

#include <cstdint>

#include "ferrum_kv/types.h"

namespace ferrum_kv::kernels {

struct QuantizeJob {
  DType dtype;            // quantized storage format
  const void* src;        // [rows][head_dim] of src_dtype (float32 or float16)
  DType src_dtype;
  int64_t rows;
  int64_t head_dim;
  uint8_t* codes;         // row r's codes at codes + r * codes_stride
  int64_t codes_stride;
  uint8_t* params;        // row r's float32 parameters at params + r * params_stride
  int64_t params_stride;
};

int64_t FindUnquantizableRowPortable(const QuantizeJob& job);
int64_t FindUnquantizableRowAvx2(const QuantizeJob& job);
int64_t FindUnquantizableRowAvx512(const QuantizeJob& job);

void QuantizeRowsPortable(const QuantizeJob& job);
void QuantizeRowsAvx2(const QuantizeJob& job);
void QuantizeRowsAvx512(const QuantizeJob& job);

}  // namespace ferrum_kv::kernels
