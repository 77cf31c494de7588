// The AVX2 (+F16C) variant of the quantize kernels (quantize_impl.h): 8 lanes.
#include <immintrin.h>

#include "kernels/quantize_impl.h"

namespace ferrum_kv::kernels {
namespace {

struct Avx2 {
  using F = __m256;
  using I = __m256i;
  static constexpr int64_t kW = 8;
  static F Load(const float* p) { return _mm256_loadu_ps(p); }
  static F LoadHalf(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static F Set1(float x) { return _mm256_set1_ps(x); }
  static F Min(F a, F b) { return _mm256_min_ps(a, b); }
  static F Max(F a, F b) { return _mm256_max_ps(a, b); }
  static F Sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F Add(F a, F b) { return _mm256_add_ps(a, b); }
  static F Div(F a, F b) { return _mm256_div_ps(a, b); }
  static I RoundToInt(F a) { return _mm256_cvtps_epi32(a); }  // MXCSR: round to nearest even
  static I Set1I(int32_t x) { return _mm256_set1_epi32(x); }
  static I MinU32(I a, I b) { return _mm256_min_epu32(a, b); }
  static I And(I a, I b) { return _mm256_and_si256(a, b); }
  static I Or(I a, I b) { return _mm256_or_si256(a, b); }
  template <int kBits>
  static I ShiftRight(I a) { return _mm256_srli_epi32(a, kBits); }
  static I ShiftRightVar(I a, int32_t bits) { return _mm256_srl_epi32(a, _mm_cvtsi32_si128(bits)); }
  static I AddI(I a, I b) { return _mm256_add_epi32(a, b); }
  static I SubI(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I LessI(I a, I b) { return _mm256_cmpgt_epi32(b, a); }
  static I Blend(I mask, I if_true, I if_false) {
    return _mm256_blendv_epi8(if_false, if_true, mask);
  }
  static I AsInt(F a) { return _mm256_castps_si256(a); }
  static F AsFloat(I a) { return _mm256_castsi256_ps(a); }
  // Folds the 8 lanes with op (min or max: exact; the order only decides which zero of mixed
  // signs comes out, and the parameters turn -0 into +0).
  template <typename Op>
  static float Reduce(F a, Op op) {
    __m128 m = op(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = op(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(op(m, _mm_movehdup_ps(m)));
  }
  static float ReduceMin(F a) {
    return Reduce(a, [](__m128 x, __m128 y) { return _mm_min_ps(x, y); });
  }
  static float ReduceMax(F a) {
    return Reduce(a, [](__m128 x, __m128 y) { return _mm_max_ps(x, y); });
  }
  static bool AnyExponentAllOnes(F a) {
    const I exponent = _mm256_and_si256(AsInt(a), _mm256_set1_epi32(0x7f800000));
    return _mm256_movemask_epi8(_mm256_cmpeq_epi32(exponent, _mm256_set1_epi32(0x7f800000))) != 0;
  }
  // The low byte of each lane: gathered to bytes 0-3 of each 128-bit half, then joined.
  static void StoreBytes(uint8_t* dst, I a) {
    const I bytes = _mm256_shuffle_epi8(
        a, _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8,
                            12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
    const I joined = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm256_castsi256_si128(joined));
  }
  // Each 64-bit lane holds (even, odd); even | odd << 4 is its low byte after or-ing in the lane
  // shifted right by 28; the four low bytes are gathered like StoreBytes'.
  static void StoreNibblePairs(uint8_t* dst, I a) {
    const I pairs = _mm256_or_si256(a, _mm256_srli_epi64(a, 28));
    const I bytes = _mm256_shuffle_epi8(
        pairs, _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 8,
                                -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
    const int32_t low = _mm256_extract_epi16(bytes, 0);
    const int32_t high = _mm256_extract_epi16(bytes, 8);
    const uint32_t packed = uint32_t(low & 0xffff) | (uint32_t(high & 0xffff) << 16);
    std::memcpy(dst, &packed, 4);
  }
};

}  // namespace

int64_t FindUnquantizableRowAvx2(const QuantizeJob& job) {
  return QuantizeKernels<Avx2>::FindUnquantizableRow(job);
}
void QuantizeRowsAvx2(const QuantizeJob& job) { QuantizeKernels<Avx2>::QuantizeRows(job); }

}  // namespace ferrum_kv::kernels
