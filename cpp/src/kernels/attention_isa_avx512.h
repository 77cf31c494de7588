// The AVX-512 (F/BW/VL/DQ) vector operations of the attention tile kernel (attention_tile_impl.h):
// 16 floats per vector, masked loads for head_dim tails, float16 widened with vcvtph2ps, bfloat16
// with a 16-bit shift (or a mask, for odd elements). Included only by files compiled for AVX-512;
// everything here has internal linkage, so each such file keeps its own copy.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace ferrum_kv::kernels {
namespace {

struct Avx512 {
  using V = __m512;
  static constexpr int kWidth = 16;
  static constexpr bool kBf16Dot = false;

  static __mmask16 Mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }

  static V Zero() { return _mm512_setzero_ps(); }
  static V Set1(float x) { return _mm512_set1_ps(x); }
  static V Load(const float* p) { return _mm512_loadu_ps(p); }
  static V LoadPartial(const float* p, int n) { return _mm512_maskz_loadu_ps(Mask(n), p); }
  static void Store(float* p, V x) { _mm512_storeu_ps(p, x); }
  static void StorePartial(float* p, V x, int n) { _mm512_mask_storeu_ps(p, Mask(n), x); }
  static V LoadHalf(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static V LoadHalfPartial(const uint16_t* p, int n) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(Mask(n), p));
  }
  static V WidenBf16(__m256i bits) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }
  static V LoadBf16(const uint16_t* p) {
    return WidenBf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static V LoadBf16Partial(const uint16_t* p, int n) {
    return WidenBf16(_mm256_maskz_loadu_epi16(Mask(n), p));
  }
  static void LoadBf16Pairs(const uint16_t* p, V* out) {
    const __m512i bits = _mm512_loadu_si512(p);
    out[0] = _mm512_castsi512_ps(_mm512_slli_epi32(bits, 16));
    out[1] = _mm512_castsi512_ps(_mm512_and_si512(bits, _mm512_set1_epi32(~0xFFFF)));
  }
  // Bytes minus 128, as floats (int8 codes centred: attention_kv_load.h); lanes past n are 0.
  // Two operations after a broadcast load: a byte shuffle puts byte i into the low byte of lane
  // i over the bits of 2^23 (0x4B000000), which makes the float 2^23 + byte exactly, and one
  // subtraction of 2^23 + 128 (exact) centres it. (Zero-extension, integer subtraction and
  // conversion took three; the values are the same.)
  static V LoadU8Centered(const uint8_t* p) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return CenterBytes(_mm512_broadcast_i32x4(bytes));
  }
  static V LoadU8CenteredPartial(const uint8_t* p, int n) {
    const V x = CenterBytes(_mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(Mask(n), p)));
    return _mm512_maskz_mov_ps(Mask(n), x);
  }
  // bytes: the same 16 bytes in each 128-bit lane.
  static V CenterBytes(__m512i bytes) {
    // Lane 4 L + i (128-bit lane L, dword i) takes byte 4 L + i of its 128-bit lane.
    const __m512i index = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i bits = _mm512_mask_shuffle_epi8(_mm512_set1_epi32(0x4B000000),
                                                  __mmask64{0x1111111111111111}, bytes, index);
    return _mm512_sub_ps(_mm512_castsi512_ps(bits), _mm512_set1_ps(8388608.0f + 128.0f));
  }
  // FP8 to float16 bits, then vcvtph2ps: E5M2 is the upper byte of a float16; E4M3's magnitude
  // shifted by 7 is a float16 of its value times 2^-8 (subnormals included): the code
  // sign-extended to 16 bits and shifted by 7 has its sign at bit 15 and again at bit 14, which
  // the mask clears (three operations instead of five with separate sign and magnitude).
  template <bool kE4M3>
  static V WidenFp8(__m128i bytes) {
    if constexpr (kE4M3) {
      const __m256i x = _mm256_slli_epi16(_mm256_cvtepi8_epi16(bytes), 7);
      return _mm512_cvtph_ps(_mm256_and_si256(x, _mm256_set1_epi16(~0x4000)));
    } else {
      // One in-lane byte shuffle of the 16 bytes (in both 128-bit lanes) puts byte i into the
      // high byte of 16-bit lane i, the low byte zero (index bit 7 set), instead of a
      // zero-extension and a shift.
      const __m256i index = _mm256_setr_epi8(-1, 0, -1, 1, -1, 2, -1, 3, -1, 4, -1, 5, -1, 6, -1, 7,
                                             -1, 8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14,
                                             -1, 15);
      return _mm512_cvtph_ps(_mm256_shuffle_epi8(_mm256_broadcastsi128_si256(bytes), index));
    }
  }
  template <bool kE4M3>
  static V LoadFp8(const uint8_t* p) {
    return WidenFp8<kE4M3>(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  template <bool kE4M3>
  static V LoadFp8Partial(const uint8_t* p, int n) {
    return WidenFp8<kE4M3>(_mm_maskz_loadu_epi8(Mask(n), p));
  }
  static void LoadNibbles(const uint8_t* p, V* out) {
    const __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    out[0] = _mm512_cvtepi32_ps(_mm512_and_si512(x, _mm512_set1_epi32(0xf)));
    out[1] = _mm512_cvtepi32_ps(_mm512_srli_epi32(x, 4));
  }
  static __mmask16 Less(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static V Select(__mmask16 mask, V a, V b) { return _mm512_mask_blend_ps(mask, b, a); }
  static V Add(V a, V b) { return _mm512_add_ps(a, b); }
  static V Sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V Div(V a, V b) { return _mm512_div_ps(a, b); }
  static V Max(V a, V b) { return _mm512_max_ps(a, b); }
  static float ReduceAdd(V x) { return _mm512_reduce_add_ps(x); }
  static float ReduceMax(V x) { return _mm512_reduce_max_ps(x); }
  // Eight horizontal sums at once (23 shuffles and adds instead of 8 x 8): fold 128-bit lanes of
  // pairs, then pairs of pairs, then finish inside the lanes.
  static void ReduceAdd8(const V* x, float* out) {
    V pairs[4];
    for (int i = 0; i < 4; ++i) {
      pairs[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0x44),
                               _mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0xEE));
    }
    // quads[0] lane k holds 4 partial sums of x[k], quads[1] lane k those of x[k + 4].
    V quads[2];
    for (int i = 0; i < 2; ++i) {
      quads[i] = _mm512_add_ps(_mm512_shuffle_f32x4(pairs[2 * i], pairs[2 * i + 1], 0x88),
                               _mm512_shuffle_f32x4(pairs[2 * i], pairs[2 * i + 1], 0xDD));
    }
    V v = _mm512_add_ps(_mm512_unpacklo_ps(quads[0], quads[1]),
                        _mm512_unpackhi_ps(quads[0], quads[1]));
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, v);  // lane k: [sum x[k], sum x[k + 4], ...]
    for (int k = 0; k < 4; ++k) {
      out[k] = lanes[4 * k];
      out[k + 4] = lanes[4 * k + 1];
    }
  }
  static V RoundNearest(V x) {
    return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static V Scale2(V y, V n) { return _mm512_scalef_ps(y, n); }
};

}  // namespace
}  // namespace ferrum_kv::kernels
