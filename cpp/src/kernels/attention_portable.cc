// The tile kernel in plain C++ (one float per "vector"), for CPUs without AVX2: the default build
// runs on any x86-64 (and any other architecture).
#include <cmath>

#include "ferrum_kv/dtype_convert.h"
#include "ferrum_kv/kv_format.h"
#include "kernels/attention_tile_impl.h"

namespace ferrum_kv::kernels {
namespace {

struct Portable {
  using V = float;
  static constexpr int kWidth = 1;
  static constexpr bool kBf16Dot = false;

  static V Zero() { return 0.0f; }
  static V Set1(float x) { return x; }
  static V Load(const float* p) { return *p; }
  static V LoadPartial(const float* p, int) { return *p; }  // never called: no tails at width 1
  static void Store(float* p, V x) { *p = x; }
  static void StorePartial(float* p, V x, int) { *p = x; }
  static V LoadHalf(const uint16_t* p) { return HalfBitsToFloat(*p); }
  static V LoadHalfPartial(const uint16_t* p, int) { return HalfBitsToFloat(*p); }
  static V LoadBf16(const uint16_t* p) { return BFloat16BitsToFloat(*p); }
  static V LoadBf16Partial(const uint16_t* p, int) { return BFloat16BitsToFloat(*p); }
  static void LoadBf16Pairs(const uint16_t* p, V* out) {
    out[0] = BFloat16BitsToFloat(p[0]);
    out[1] = BFloat16BitsToFloat(p[1]);
  }
  static V LoadU8Centered(const uint8_t* p) { return float(*p) - 128.0f; }
  static V LoadU8CenteredPartial(const uint8_t* p, int) { return LoadU8Centered(p); }
  // E4M3 values times 2^-8, as the SIMD variants' float16 trick gives them (exact).
  template <bool kIsE4M3>
  static V LoadFp8(const uint8_t* p) {
    return kIsE4M3 ? DecodeFp8(*p, kE4M3) * (1.0f / 256.0f) : DecodeFp8(*p, kE5M2);
  }
  template <bool kIsE4M3>
  static V LoadFp8Partial(const uint8_t* p, int) { return LoadFp8<kIsE4M3>(p); }
  static void LoadNibbles(const uint8_t* p, V* out) {
    out[0] = float(*p & 0xfu);
    out[1] = float(*p >> 4);
  }
  static bool Less(V a, V b) { return a < b; }
  static V Select(bool mask, V a, V b) { return mask ? a : b; }
  static V Add(V a, V b) { return a + b; }
  static V Sub(V a, V b) { return a - b; }
  static V Mul(V a, V b) { return a * b; }
  static V Fma(V a, V b, V c) { return a * b + c; }
  static V Div(V a, V b) { return a / b; }
  static V Max(V a, V b) { return a > b ? a : b; }
  static float ReduceAdd(V x) { return x; }
  static float ReduceMax(V x) { return x; }
  static void ReduceAdd8(const V* x, float* out) {
    for (int i = 0; i < 8; ++i) out[i] = ReduceAdd(x[i]);
  }
  static V RoundNearest(V x) { return std::nearbyint(x); }
  static V Scale2(V y, V n) { return std::ldexp(y, static_cast<int>(n)); }
};

}  // namespace

void AttentionTilePortable(const AttentionTile& tile) { RunAttentionTile<Portable>(tile); }

}  // namespace ferrum_kv::kernels
