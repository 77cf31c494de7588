// Paged attention on the CPU: decode (one query token per sequence) and chunked prefill (the last
// query_lens[i] tokens of sequence i, causal) over the K/V of one layer of a KvStorage, addressed
// through explicit block tables.
//
// Shapes (all C-contiguous; D = head_dim, Hq = num_q_heads, Hkv = storage num_kv_heads):
//   q            decode [B][Hq][D] float32; prefill [sum(query_lens)][Hq][D] float32, the rows of
//                sequence 0 first, then sequence 1, ...
//   block_tables [B][max_blocks] int32: block_tables[i][j] holds tokens j*block_size ..
//                (j+1)*block_size - 1 of sequence i. Entries past a sequence's last block are
//                never read (padding, conventionally -1).
//   context_lens [B] int32, >= 1: the number of tokens of sequence i that have K/V in the cache.
//   query_lens   [B] int32 (prefill only), 1 <= query_lens[i] <= context_lens[i]: query row j of
//                sequence i is token position p = context_lens[i] - query_lens[i] + j and attends
//                to positions 0..p (causal; positions before the chunk are the cached prefix).
//   out          same shape as q, float32; every element is written.
// Semantics: out[row][h] = softmax_t(scale * q[row][h] . K[t][h / G]) @ V[t][h / G] with
// G = Hq / Hkv (grouped-query attention; Hq == Hkv is multi-head, Hkv == 1 multi-query).
// Accumulation is float32 with an online softmax; 16-bit K/V are widened exactly in registers.
// Optional features (AttentionOptions; all off by default), for query head h at position p and
// key position t: the logit is l = scale * q . k, then
//   soft cap       l = soft_cap * tanh(l / soft_cap)                 (Gemma-2; before ALiBi)
//   ALiBi          l += alibi_slopes[h] * (t - p)                    (t - p <= 0)
//   sliding window only keys p - sliding_window < t <= p are attended (the last W positions up
//                  to and including the query's own); keys before the window are skipped, never
//                  read.
//
// Precision (AttentionOptions::precision): kExact (the default) computes as described above.
// kFast uses the CPU's low-precision dot products where the chosen kernel variant has them
// (AttentionFastSupported): for bfloat16 K/V on AVX-512 with AVX512-BF16, Q.K with vdpbf16ps on
// the query rounded to bfloat16 (decode; prefill scores stay float32) and P.V with vdpbf16ps on
// the weights rounded to bfloat16 (relative error ~3e-3 against float64, below 1.5e-2); for int8
// K/V on AVX-512 with AVX512-VNNI (and BF16), decode Q.K with vpdpbusd on the codes against the
// query in two int8 digits and P.V with vpdpwssd on int16 weights (~4e-4;
// kernels/attention_quant_avx512fast.cc); for fp8 K/V on AVX-512 with AVX512-FP16, decode Q.K
// and P.V in float16 arithmetic (vfmadd231ph) on the codes widened to float16, the query and the
// weights rounded to float16 (~2e-3; kernels/attention_fp8_avx512fp16.cc). Where the variant has
// no such kernel (int4, the AVX2 and portable variants), kFast runs exactly the kExact code.
//
// Errors (thrown before anything is read or written): InvalidArgument for inconsistent sizes,
// a negative sliding_window, a negative or non-finite soft_cap, a non-finite ALiBi slope,
// Hq not a multiple of Hkv, context or query lengths out of range, a table entry that will be
// read outside [0, num_blocks), a max_blocks too small for a context, or a kernel variant this
// CPU lacks; IndexOutOfRange for a layer outside [0, num_layers).
// Thread safety: reentrant; the call reads storage without locks, so the caller guarantees that no
// block it reads is freed or rewritten during the call. q and out must not overlap.
// Complexity: O(sum over rows of context tokens seen * D); each K/V byte of a (sequence, KV head)
// is read once per call in decode (all G query heads of a KV head are processed together), once
// per tile of query tokens in prefill. Work is spread over the library's threads (parallel.h); when
// there are fewer
// (sequence, KV head) pairs than a few per thread, long contexts are split across threads and
// the partial softmax states are merged (flash-decoding).
#pragma once

#include <cstdint>
#include <string>

#include "ferrum_kv/kv_storage.h"

namespace ferrum_kv {

// Which implementation runs. kAuto picks the widest SIMD variant the CPU supports at run time.
// kReference is the scalar float64 oracle (slow; for tests).
enum class AttentionIsa : uint8_t { kAuto, kReference, kPortable, kAvx2, kAvx512 };

// "auto" | "reference" | "portable" | "avx2" | "avx512", and back (InvalidArgument otherwise).
const char* AttentionIsaName(AttentionIsa isa);
AttentionIsa ParseAttentionIsa(const std::string& name);
// Whether this CPU can run isa (kAuto, kReference and kPortable always can).
bool AttentionIsaSupported(AttentionIsa isa);
// What kAuto resolves to on this CPU.
AttentionIsa BestAttentionIsa();

// "exact" | "fast" (see above), and back (InvalidArgument otherwise).
enum class AttentionPrecision : uint8_t { kExact, kFast };
const char* AttentionPrecisionName(AttentionPrecision precision);
AttentionPrecision ParseAttentionPrecision(const std::string& name);
// Whether kFast on variant isa (kAuto resolved) over K/V stored as dtype runs a low-precision
// kernel on this CPU (false: it runs the kExact code).
bool AttentionFastSupported(AttentionIsa isa, DType dtype);

struct AttentionOptions {
  AttentionIsa isa = AttentionIsa::kAuto;
  AttentionPrecision precision = AttentionPrecision::kExact;
  // Threads to use, in [0, kMaxThreads]; 0 means DefaultNumThreads() (parallel.h).
  int32_t num_threads = 0;
  // Sliding window W (attend to the last W positions, the query's own included); 0 = off.
  int32_t sliding_window = 0;
  // Logit soft cap: logits -> soft_cap * tanh(logits / soft_cap); 0 = off. Finite, >= 0.
  float soft_cap = 0.0f;
  // ALiBi: [num_q_heads] float32 slopes (finite), or nullptr = off. Read during the call only.
  const float* alibi_slopes = nullptr;
};

// The tables of one batch, as described above. query_lens is nullptr for decode.
struct PagedBatch {
  const int32_t* block_tables = nullptr;
  const int32_t* context_lens = nullptr;
  const int32_t* query_lens = nullptr;
  int32_t batch_size = 0;
  int32_t max_blocks = 0;
};

// Decode: q and out are [batch.batch_size][num_q_heads][head_dim]; batch.query_lens must be null.
void PagedAttentionDecode(const float* q, int32_t num_q_heads, const KvStorage& storage,
                          int32_t layer, const PagedBatch& batch, float scale, float* out,
                          const AttentionOptions& options = {});

// Prefill: q and out are [num_query_tokens][num_q_heads][head_dim] with num_query_tokens ==
// sum(batch.query_lens) (checked; batch.query_lens must not be null).
void PagedAttentionPrefill(const float* q, int64_t num_query_tokens, int32_t num_q_heads,
                           const KvStorage& storage, int32_t layer, const PagedBatch& batch,
                           float scale, float* out, const AttentionOptions& options = {});

}  // namespace ferrum_kv
