// Bulk quantization of K/V rows to a quantized storage format (kv_format.h), and back.
//
// A row is head_dim consecutive elements of src (float32, or float16 widened exactly first).
// QuantizeRows writes row r's codes at codes + r * codes_stride and its float32 parameters at
// params + r * params_stride (byte strides: a token's K rows go to consecutive head regions).
// The results are bit-identical to kv_format.h's scalar QuantizeRow in every ISA variant
// (AVX-512, AVX2, portable; picked at run time, or forced with isa as in attention.h).
//
// Errors: InvalidArgument for an unquantized dtype or a src_dtype other than float32/float16, or
// an isa this CPU lacks. QuantizeRows requires RowQuantizable for every row: callers validate
// all rows with FindUnquantizableRow first, so that a bad row writes nothing. A row that fails it
// anyway (changed by another thread after the check) gets unspecified codes and parameters,
// never undefined behaviour.
// Thread safety: pure functions over the given memory. Complexity: O(rows * head_dim).
#pragma once

#include <cstdint>

#include "ferrum_kv/attention.h"
#include "ferrum_kv/types.h"

namespace ferrum_kv {

// The index of the first row that kv_format.h's RowQuantizable rejects (a non-finite element,
// or max - min overflowing float32 for int8/int4), or -1 when every row can be quantized.
int64_t FindUnquantizableRow(DType dtype, const void* src, DType src_dtype, int64_t rows,
                             int64_t head_dim, AttentionIsa isa = AttentionIsa::kAuto);

void QuantizeRows(DType dtype, const void* src, DType src_dtype, int64_t rows, int64_t head_dim,
                  uint8_t* codes, int64_t codes_stride, uint8_t* params, int64_t params_stride,
                  AttentionIsa isa = AttentionIsa::kAuto);

// out[r * head_dim + i] = x_hat of element i of row r (kv_format.h's DequantizeRow).
void DequantizeRows(DType dtype, const uint8_t* codes, int64_t codes_stride,
                    const uint8_t* params, int64_t params_stride, int64_t rows, int64_t head_dim,
                    float* out);

}  // namespace ferrum_kv
