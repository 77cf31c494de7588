// The AVX-512 (F, BW, VL, DQ) variant of the quantize kernels (quantize_impl.h): 16 lanes.
#include <immintrin.h>

// GCC 12 reports the deliberately undefined source operand inside its own intrinsic headers
// (_mm512_undefined_ps and the like) as (maybe-)uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "kernels/quantize_impl.h"

namespace ferrum_kv::kernels {
namespace {

struct Avx512 {
  using F = __m512;
  using I = __m512i;
  static constexpr int64_t kW = 16;
  static F Load(const float* p) { return _mm512_loadu_ps(p); }
  static F LoadHalf(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static F Set1(float x) { return _mm512_set1_ps(x); }
  static F Min(F a, F b) { return _mm512_min_ps(a, b); }
  static F Max(F a, F b) { return _mm512_max_ps(a, b); }
  static F Sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F Add(F a, F b) { return _mm512_add_ps(a, b); }
  static F Div(F a, F b) { return _mm512_div_ps(a, b); }
  static I RoundToInt(F a) { return _mm512_cvtps_epi32(a); }  // MXCSR: round to nearest even
  static I Set1I(int32_t x) { return _mm512_set1_epi32(x); }
  static I MinU32(I a, I b) { return _mm512_min_epu32(a, b); }
  static I And(I a, I b) { return _mm512_and_si512(a, b); }
  static I Or(I a, I b) { return _mm512_or_si512(a, b); }
  template <int kBits>
  static I ShiftRight(I a) { return _mm512_srli_epi32(a, kBits); }
  static I ShiftRightVar(I a, int32_t bits) { return _mm512_srl_epi32(a, _mm_cvtsi32_si128(bits)); }
  static I AddI(I a, I b) { return _mm512_add_epi32(a, b); }
  static I SubI(I a, I b) { return _mm512_sub_epi32(a, b); }
  static __mmask16 LessI(I a, I b) { return _mm512_cmplt_epi32_mask(a, b); }
  static I Blend(__mmask16 mask, I if_true, I if_false) {
    return _mm512_mask_blend_epi32(mask, if_false, if_true);
  }
  static I AsInt(F a) { return _mm512_castps_si512(a); }
  static F AsFloat(I a) { return _mm512_castsi512_ps(a); }
  static float ReduceMin(F a) { return _mm512_reduce_min_ps(a); }
  static float ReduceMax(F a) { return _mm512_reduce_max_ps(a); }
  static bool AnyExponentAllOnes(F a) {
    const I exponent = _mm512_and_si512(AsInt(a), _mm512_set1_epi32(0x7f800000));
    return _mm512_cmpeq_epi32_mask(exponent, _mm512_set1_epi32(0x7f800000)) != 0;
  }
  static void StoreBytes(uint8_t* dst, I a) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm512_cvtepi32_epi8(a));
  }
  // Each 64-bit lane holds (even, odd); even | odd << 4 is its low byte after or-ing in the lane
  // shifted right by 28.
  static void StoreNibblePairs(uint8_t* dst, I a) {
    const __m128i bytes = _mm512_cvtepi64_epi8(_mm512_or_si512(a, _mm512_srli_epi64(a, 28)));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), bytes);
  }
};

}  // namespace

int64_t FindUnquantizableRowAvx512(const QuantizeJob& job) {
  return QuantizeKernels<Avx512>::FindUnquantizableRow(job);
}
void QuantizeRowsAvx512(const QuantizeJob& job) { QuantizeKernels<Avx512>::QuantizeRows(job); }

}  // namespace ferrum_kv::kernels
