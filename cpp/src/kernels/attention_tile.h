// The unit of work of the paged-attention kernels (internal to the library): up to kMaxTileRows
// query rows of one sequence that share one KV head, against one range of that sequence's key
// positions. attention.cc cuts a batch into tiles (and long contexts into several key ranges),
// runs them on threads and merges the partial results; the functions below are the per-ISA inner
// loops, selected at run time.
#pragma once

#include <cstdint>

#include "ferrum_kv/types.h"

namespace ferrum_kv::kernels {

// Prefill tiles of 64 rows widen (dequantize) each span's K/V for 4x as many rows as 16-row
// tiles did (quantized prefill 1.09-1.17x faster; docs/attention.md).
inline constexpr int32_t kMaxTileRows = 64;
// Keys scored, softmaxed and accumulated per step (a multiple of every SIMD width).
inline constexpr int32_t kSpanTokens = 64;

struct AttentionTile {
  // [num_rows][head_dim] float32, already multiplied by the softmax scale.
  const float* q = nullptr;
  // [num_rows]: row r attends to key positions < row_end[r] (its causal limit).
  const int32_t* row_end = nullptr;
  int32_t num_rows = 0;
  // Key positions [key_begin, key_end) of the sequence are visited.
  int32_t key_begin = 0;
  int32_t key_end = 0;
  // The sequence's block table row: position p is in block block_table[p / block_size]. Every
  // entry covering [key_begin, key_end) has been validated by the caller.
  const int32_t* block_table = nullptr;
  // The K (and V) head region of (block 0, the layer, the KV head); block b's is block_bytes
  // further. Quantized formats: row parameters start params_offset bytes into a head region.
  const uint8_t* k_base = nullptr;
  const uint8_t* v_base = nullptr;
  int64_t block_bytes = 0;
  int64_t params_offset = 0;
  int32_t block_size = 0;
  int32_t head_dim = 0;
  DType dtype = DType::kFloat32;
  // Optional features (attention.h). Row r is query position row_end[r] - 1.
  // Sliding window: [num_rows], row r also masks key positions < row_begin[r]; nullptr = off.
  // The caller starts key_begin at the smallest row_begin (whole blocks before it are skipped).
  const int32_t* row_begin = nullptr;
  // Logit soft cap (> 0), applied to the scaled scores; 0 = off.
  float soft_cap = 0.0f;
  // ALiBi: [num_rows] slope of each row's query head; score += slope * (key - query position).
  const float* row_slope = nullptr;
  // Output, the unnormalised online-softmax state of each row over the visited keys:
  // max[r] = max score, sum[r] = sum of exp(score - max[r]), acc[r] = sum of exp(score - max[r]) v.
  // A row that sees no key in the range gets max = -inf, sum = 0, acc = 0.
  float* acc = nullptr;  // [num_rows][head_dim]
  float* max = nullptr;  // [num_rows]
  float* sum = nullptr;  // [num_rows]
};

// Identical contracts; the AVX2 one needs AVX2 + FMA + F16C, the AVX-512 one AVX-512 F/BW/VL/DQ.
void AttentionTilePortable(const AttentionTile& tile);
void AttentionTileAvx2(const AttentionTile& tile);
void AttentionTileAvx512(const AttentionTile& tile);
// The "fast" precision on AVX-512 with AVX512-BF16 and AVX512-VNNI (bfloat16 K/V; any other
// dtype runs the exact AVX-512 kernel).
void AttentionTileAvx512Fast(const AttentionTile& tile);
// The "fast" precision over quantized K/V (int8) on AVX-512 with AVX512-VNNI (any other dtype
// runs the exact AVX-512 kernel); attention_quant_avx512fast.cc has its contract.
void AttentionTileAvx512QuantFast(const AttentionTile& tile);
// Whether AttentionTileAvx512Fast / AttentionTileAvx512QuantFast has a fast kernel for dtype.
constexpr bool HasAvx512FastKernel(DType dtype) {
  return dtype == DType::kBFloat16 || dtype == DType::kInt8;
}
// The "fast" precision over FP8 K/V (fp8_e4m3, fp8_e5m2) on AVX-512 with AVX512-FP16: float16
// arithmetic (any other dtype runs the exact AVX-512 kernel); attention_fp8_avx512fp16.cc has its
// contract.
void AttentionTileAvx512Fp8Fast(const AttentionTile& tile);
constexpr bool HasAvx512Fp16Kernel(DType dtype) {
  return dtype == DType::kFp8E4M3 || dtype == DType::kFp8E5M2;
}

}  // namespace ferrum_kv::kernels
