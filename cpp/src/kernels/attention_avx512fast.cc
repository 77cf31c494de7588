// The tile kernel of the "fast" precision (attention.h) for AVX-512 CPUs that also have
// AVX512-BF16 and AVX512-VNNI (compiled with those flags; attention.cc calls it only after
// checking them at run time): the AVX-512 operations plus bfloat16 dot products (vdpbf16ps).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

// As in attention_avx512.cc: GCC 12's intrinsic headers trip these on purpose-undefined operands.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "kernels/attention_isa_avx512.h"
#include "kernels/attention_tile_impl.h"

namespace ferrum_kv::kernels {
namespace {

struct Avx512Fast : Avx512 {
  static constexpr bool kBf16Dot = true;
  using B = __m512bh;  // 32 bfloat16

  static B LoadBf16Raw(const uint16_t* p) { return (B)_mm512_loadu_si512(p); }
  static B LoadBf16RawPartial(const uint16_t* p, int n) {
    return (B)_mm512_maskz_loadu_epi16(static_cast<__mmask32>((uint64_t{1} << n) - 1), p);
  }
  // Within each 128-bit lane L, unpacklo pairs columns 8L .. 8L + 3 of a and b, unpackhi columns
  // 8L + 4 .. 8L + 7: out[0] lane 4L + m holds column 8L + m, out[1] lane 4L + m column 8L + 4 + m.
  static void InterleaveBf16(const uint16_t* a, const uint16_t* b, B* out) {
    const __m512i x = _mm512_loadu_si512(a);
    const __m512i y = _mm512_loadu_si512(b);
    out[0] = (B)_mm512_unpacklo_epi16(x, y);
    out[1] = (B)_mm512_unpackhi_epi16(x, y);
  }
  // out[0, n rounded up to even) = x[0, n) rounded to bfloat16 (to nearest even), then 0.
  static void ToBf16(const float* x, int n, uint16_t* out) {
    for (int c = 0; c < n; c += 32) {
      const int lanes = std::min(32, n - c);
      const V low = _mm512_maskz_loadu_ps(Mask(std::min(16, lanes)), x + c);
      const V high = _mm512_maskz_loadu_ps(Mask(std::max(0, lanes - 16)), x + c + 16);
      const int stored = std::min(32, (n + 1) / 2 * 2 - c);
      _mm512_mask_storeu_epi16(out + c, static_cast<__mmask32>((uint64_t{1} << stored) - 1),
                               (__m512i)_mm512_cvtne2ps_pbh(high, low));
    }
  }
  // A pair of bfloat16 (as ToBf16 stores them) in every 32-bit lane.
  static B Broadcast(const uint16_t* pair) {
    uint32_t bits;
    std::memcpy(&bits, pair, sizeof bits);
    return (B)_mm512_set1_epi32(static_cast<int>(bits));
  }
  static V Dot(V acc, B a, B b) { return _mm512_dpbf16_ps(acc, a, b); }
  // 32 bfloat16 widened in InterleaveBf16's column order (unpacking with zeros below each
  // element): out[0] lane 4L + m is column 8L + m, out[1] lane 4L + m column 8L + 4 + m.
  static void LoadBf16Pairs(const uint16_t* p, V* out) {
    const __m512i bits = _mm512_loadu_si512(p);
    const __m512i zero = _mm512_setzero_si512();
    out[0] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, bits));
    out[1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, bits));
  }
};

}  // namespace

void AttentionTileAvx512Fast(const AttentionTile& tile) {
  switch (tile.dtype) {
    case DType::kBFloat16: return TileKernel<Avx512Fast, DType::kBFloat16>::Run(tile);
    default: return AttentionTileAvx512(tile);  // no fast kernel: the exact one
  }
}

}  // namespace ferrum_kv::kernels
