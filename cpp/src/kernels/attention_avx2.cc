// The tile kernel for AVX2 + FMA + F16C: 8 floats per vector, float16 widened with vcvtph2ps,
// bfloat16 with a 16-bit shift (or a mask, for odd elements). head_dim tails (head_dim % 8 != 0)
// go through a small buffer.
#include <immintrin.h>

#include <cstring>

#include "kernels/attention_tile_impl.h"

namespace ferrum_kv::kernels {
namespace {

struct Avx2 {
  using V = __m256;
  static constexpr int kWidth = 8;
  static constexpr bool kBf16Dot = false;

  static V Zero() { return _mm256_setzero_ps(); }
  static V Set1(float x) { return _mm256_set1_ps(x); }
  static V Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, V x) { _mm256_storeu_ps(p, x); }
  template <class T>
  static void CopyPartial(const T* p, int n, T (&buffer)[kWidth]) {
    std::memset(buffer, 0, sizeof buffer);
    std::memcpy(buffer, p, sizeof(T) * n);
  }
  static V LoadPartial(const float* p, int n) {
    float buffer[kWidth];
    CopyPartial(p, n, buffer);
    return Load(buffer);
  }
  static void StorePartial(float* p, V x, int n) {
    float buffer[kWidth];
    Store(buffer, x);
    std::memcpy(p, buffer, sizeof(float) * n);
  }
  static V LoadHalf(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static V LoadHalfPartial(const uint16_t* p, int n) {
    uint16_t buffer[kWidth];
    CopyPartial(p, n, buffer);
    return LoadHalf(buffer);
  }
  static V LoadBf16(const uint16_t* p) {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  }
  static V LoadBf16Partial(const uint16_t* p, int n) {
    uint16_t buffer[kWidth];
    CopyPartial(p, n, buffer);
    return LoadBf16(buffer);
  }
  static void LoadBf16Pairs(const uint16_t* p, V* out) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    out[0] = _mm256_castsi256_ps(_mm256_slli_epi32(bits, 16));
    out[1] = _mm256_castsi256_ps(_mm256_and_si256(bits, _mm256_set1_epi32(~0xFFFF)));
  }
  static __m128i Load8Bytes(const uint8_t* p) {
    return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  }
  // Bytes minus 128, as floats (int8 codes centred: attention_kv_load.h); lanes past n are 0.
  static V LoadU8Centered(const uint8_t* p) {
    const __m256i x = _mm256_cvtepu8_epi32(Load8Bytes(p));
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(x, _mm256_set1_epi32(128)));
  }
  static V LoadU8CenteredPartial(const uint8_t* p, int n) {
    float buffer[kWidth] = {};
    for (int i = 0; i < n; ++i) buffer[i] = float(p[i]) - 128.0f;
    return Load(buffer);
  }
  // As in attention_isa_avx512.h: FP8 to float16 bits, then vcvtph2ps.
  template <bool kE4M3>
  static V LoadFp8(const uint8_t* p) {
    if constexpr (kE4M3) {
      const __m128i x = _mm_slli_epi16(_mm_cvtepi8_epi16(Load8Bytes(p)), 7);
      return _mm256_cvtph_ps(_mm_and_si128(x, _mm_set1_epi16(~0x4000)));
    } else {
      return _mm256_cvtph_ps(_mm_slli_epi16(_mm_cvtepu8_epi16(Load8Bytes(p)), 8));
    }
  }
  template <bool kE4M3>
  static V LoadFp8Partial(const uint8_t* p, int n) {
    uint8_t buffer[kWidth];
    CopyPartial(p, n, buffer);
    return LoadFp8<kE4M3>(buffer);
  }
  static void LoadNibbles(const uint8_t* p, V* out) {
    const __m256i x = _mm256_cvtepu8_epi32(Load8Bytes(p));
    out[0] = _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(0xf)));
    out[1] = _mm256_cvtepi32_ps(_mm256_srli_epi32(x, 4));
  }
  static V Less(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static V Select(V mask, V a, V b) { return _mm256_blendv_ps(b, a, mask); }
  static V Add(V a, V b) { return _mm256_add_ps(a, b); }
  static V Sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V Div(V a, V b) { return _mm256_div_ps(a, b); }
  static V Max(V a, V b) { return _mm256_max_ps(a, b); }
  static float ReduceAdd(V x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float ReduceMax(V x) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  static void ReduceAdd8(const V* x, float* out) {
    for (int i = 0; i < 8; ++i) out[i] = ReduceAdd(x[i]);
  }
  static V RoundNearest(V x) {
    return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // y * 2^n for integral n in [-126, 127] (Exp's clamp keeps n >= -126).
  static V Scale2(V y, V n) {
    const __m256i exponent = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(exponent));
  }
};

}  // namespace

void AttentionTileAvx2(const AttentionTile& tile) { RunAttentionTile<Avx2>(tile); }

}  // namespace ferrum_kv::kernels
