// The SHA-256 compression function on the x86 SHA extensions. Compiled with -msha -msse4.1
// -mssse3 (CMakeLists.txt); called only where sha256::CpuHasShaNi().
//
// sha256rnds2 runs two rounds on a state split across two registers as ABEF and CDGH (A in the
// high lane), taking W+K for those two rounds from the low 64 bits of its third operand.
// sha256msg1 / sha256msg2 compute the message schedule four words at a time:
//   W[t..t+3] = msg2(msg1(W[t-16..t-13], W[t-12..t-9]) + W[t-7..t-4], W[t-4..t-1]),
// where W[t-7..t-4] is alignr(W[t-4..t-1], W[t-8..t-5], 4). The schedule runs one quad of rounds
// ahead of its use, off the dependency chain of the rounds.
#include <immintrin.h>

#include "sha256.h"

namespace ferrum_kv::sha256 {

void CompressShaNi(State* state, const uint8_t* blocks, size_t num_blocks) {
  // Big-endian words: reverse the bytes of each 32-bit lane.
  const __m128i byte_swap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
  const __m128i dcba = _mm_loadu_si128(reinterpret_cast<const __m128i*>(&state->h[0]));
  const __m128i hgfe = _mm_loadu_si128(reinterpret_cast<const __m128i*>(&state->h[4]));
  const __m128i cdab = _mm_shuffle_epi32(dcba, 0xb1);
  const __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1b);
  __m128i abef = _mm_alignr_epi8(cdab, efgh, 8);
  __m128i cdgh = _mm_blend_epi16(efgh, cdab, 0xf0);

  for (; num_blocks > 0; --num_blocks, blocks += kBlockBytes) {
    const __m128i abef_in = abef;
    const __m128i cdgh_in = cdgh;
    __m128i w[4];  // w[q % 4] holds W[4q .. 4q+3]
#pragma GCC unroll 16
    for (int q = 0; q < 16; ++q) {
      if (q < 4) {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blocks + 16 * q));
        w[q] = _mm_shuffle_epi8(raw, byte_swap);
      }
      __m128i wk = _mm_add_epi32(
          w[q % 4], _mm_loadu_si128(reinterpret_cast<const __m128i*>(&kRoundConstants[4 * q])));
      cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);
      if (q >= 3 && q < 15) {  // finish W[4(q+1) .. 4(q+1)+3]
        const __m128i previous = _mm_alignr_epi8(w[q % 4], w[(q + 3) % 4], 4);
        w[(q + 1) % 4] = _mm_sha256msg2_epu32(_mm_add_epi32(w[(q + 1) % 4], previous), w[q % 4]);
      }
      wk = _mm_shuffle_epi32(wk, 0x0e);
      abef = _mm_sha256rnds2_epu32(abef, cdgh, wk);
      if (q >= 1 && q < 13) {  // start W[4(q+3) .. 4(q+3)+3]
        w[(q + 3) % 4] = _mm_sha256msg1_epu32(w[(q + 3) % 4], w[q % 4]);
      }
    }
    abef = _mm_add_epi32(abef, abef_in);
    cdgh = _mm_add_epi32(cdgh, cdgh_in);
  }

  const __m128i feba = _mm_shuffle_epi32(abef, 0x1b);
  const __m128i dchg = _mm_shuffle_epi32(cdgh, 0xb1);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(&state->h[0]), _mm_blend_epi16(feba, dchg, 0xf0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(&state->h[4]), _mm_alignr_epi8(dchg, feba, 8));
}

}  // namespace ferrum_kv::sha256
