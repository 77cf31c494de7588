#include <immintrin.h>

#include <cstring>

#include "prefix_key_lanes.h"

namespace ferrum_kv::kernels {
namespace {

constexpr int kLanes = 8;

// The maskz forms (all lanes) of rol and cvtepu32: GCC 12 warns about the unmasked ones, whose
// pass-through operand is _mm512_undefined_epi32() (-Wmaybe-uninitialized).
template <int kBits>
__m512i Rotl(__m512i x) {
  return _mm512_maskz_rol_epi64(0xff, x, kBits);
}

struct SipLanes {
  __m512i v0, v1, v2, v3;

  SipLanes(uint64_t k0, uint64_t k1)
      : v0(_mm512_set1_epi64(int64_t(k0 ^ 0x736f6d6570736575ull))),
        v1(_mm512_set1_epi64(int64_t(k1 ^ 0x646f72616e646f6dull ^ 0xee))),
        v2(_mm512_set1_epi64(int64_t(k0 ^ 0x6c7967656e657261ull))),
        v3(_mm512_set1_epi64(int64_t(k1 ^ 0x7465646279746573ull))) {}

  void Round() {
    v0 = _mm512_add_epi64(v0, v1);
    v1 = Rotl<13>(v1);
    v1 = _mm512_xor_si512(v1, v0);
    v0 = Rotl<32>(v0);
    v2 = _mm512_add_epi64(v2, v3);
    v3 = Rotl<16>(v3);
    v3 = _mm512_xor_si512(v3, v2);
    v0 = _mm512_add_epi64(v0, v3);
    v3 = Rotl<21>(v3);
    v3 = _mm512_xor_si512(v3, v0);
    v2 = _mm512_add_epi64(v2, v1);
    v1 = Rotl<17>(v1);
    v1 = _mm512_xor_si512(v1, v2);
    v2 = Rotl<32>(v2);
  }
  void Word(__m512i m) {
    v3 = _mm512_xor_si512(v3, m);
    Round();
    Round();
    v0 = _mm512_xor_si512(v0, m);
  }
  __m512i Fold() const {
    return _mm512_xor_si512(_mm512_xor_si512(v0, v1), _mm512_xor_si512(v2, v3));
  }
};

}  // namespace

bool KeyLanesAvx512Supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

void ChainManyAvx512(uint64_t secret0, uint64_t secret1, const KeyChainJob* jobs, int64_t n,
                     int32_t block_size) {
  // Per lane: its job, the next block of that job, and the address of that block's tokens (an
  // idle lane reads a block of zeros and its result is dropped).
  alignas(64) int64_t job_of[kLanes];
  alignas(64) int64_t block_of[kLanes];
  alignas(64) const int32_t* address[kLanes];
  alignas(64) int64_t word_step[kLanes];  // 8 bytes per word; 0 for an idle lane
  alignas(64) uint64_t key_lo[kLanes];
  alignas(64) uint64_t key_hi[kLanes];
  static const int32_t kIdleBlock[2] = {0, 0};  // read only up to 8 bytes per gather lane
  const uint64_t message_len = (16 + uint64_t(block_size) * 4) << 56;  // len mod 256, top byte
  int64_t next_job = 0;
  int active = 0;
  for (int lane = 0; lane < kLanes; ++lane) job_of[lane] = -1;

  for (;;) {
    for (int lane = 0; lane < kLanes; ++lane) {  // refill idle lanes with unfinished jobs
      if (job_of[lane] >= 0) continue;
      while (next_job < n && jobs[next_job].num_blocks == 0) ++next_job;
      if (next_job == n) {
        address[lane] = kIdleBlock;
        word_step[lane] = 0;
        continue;
      }
      const KeyChainJob& job = jobs[next_job];
      job_of[lane] = next_job++;
      block_of[lane] = 0;
      address[lane] = job.tokens;
      word_step[lane] = 8;
      key_lo[lane] = job.parent.lo;
      key_hi[lane] = job.parent.hi;
      ++active;
    }
    if (active == 0) return;

    SipLanes sip(secret0, secret1);
    sip.Word(_mm512_load_si512(key_lo));
    sip.Word(_mm512_load_si512(key_hi));
    __m512i pointers = _mm512_load_si512(reinterpret_cast<const void*>(address));
    const __m512i step = _mm512_load_si512(word_step);
    int32_t t = 0;
    for (; t + 2 <= block_size; t += 2) {  // two token ids per word
      sip.Word(_mm512_mask_i64gather_epi64(_mm512_setzero_si512(), 0xff, pointers, nullptr, 1));
      pointers = _mm512_add_epi64(pointers, step);
    }
    __m512i tail = _mm512_setzero_si512();
    if (t < block_size) {  // the odd last id: a 4-byte gather, zero-extended
      tail = _mm512_maskz_cvtepu32_epi64(
          0xff, _mm512_mask_i64gather_epi32(_mm256_setzero_si256(), 0xff, pointers, nullptr, 1));
    }
    sip.Word(_mm512_or_si512(tail, _mm512_set1_epi64(int64_t(message_len))));
    sip.v2 = _mm512_xor_si512(sip.v2, _mm512_set1_epi64(0xee));
    for (int i = 0; i < 4; ++i) sip.Round();
    _mm512_store_si512(key_lo, sip.Fold());
    sip.v1 = _mm512_xor_si512(sip.v1, _mm512_set1_epi64(0xdd));
    for (int i = 0; i < 4; ++i) sip.Round();
    _mm512_store_si512(key_hi, sip.Fold());

    for (int lane = 0; lane < kLanes; ++lane) {
      if (job_of[lane] < 0) continue;
      const KeyChainJob& job = jobs[job_of[lane]];
      job.out[block_of[lane]] = PrefixKey{key_lo[lane], key_hi[lane]};
      if (++block_of[lane] == job.num_blocks) {
        job_of[lane] = -1;
        --active;
      } else {
        address[lane] += block_size;
      }
    }
  }
}

}  // namespace ferrum_kv::kernels
