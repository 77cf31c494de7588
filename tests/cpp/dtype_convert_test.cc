#include "ferrum_kv/dtype_convert.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace ferrum_kv {
namespace {

// Reference float -> half by exhaustive search over the 2^16 half values: the nearest one, ties
// to the even bit pattern. Slow, obviously correct.
uint16_t NearestHalf(float value) {
  uint16_t best = 0;
  double best_error = std::numeric_limits<double>::infinity();
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float candidate = HalfBitsToFloat(uint16_t(bits));
    if (!std::isfinite(candidate)) continue;
    const double error = std::abs(double(candidate) - double(value));
    if (error < best_error || (error == best_error && (bits & 1) == 0 && (best & 1) == 1 &&
                               std::signbit(candidate) == std::signbit(value))) {
      best_error = error;
      best = uint16_t(bits);
    }
  }
  return best;
}

TEST(DTypeConvertTest, HalfDecodesKnownValues) {
  EXPECT_EQ(HalfBitsToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfBitsToFloat(0xc000), -2.0f);
  EXPECT_EQ(HalfBitsToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(HalfBitsToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(HalfBitsToFloat(0x7c00)));
  EXPECT_TRUE(std::isnan(HalfBitsToFloat(0x7e00)));
}

TEST(DTypeConvertTest, HalfEncodingIsNearestEvenOnSampledValues) {
  // Every half value, and the midpoints between neighbours (the tie cases), plus nudges.
  for (uint32_t bits = 0; bits < 0x7bff; bits += 37) {
    const float low = HalfBitsToFloat(uint16_t(bits));
    const float high = HalfBitsToFloat(uint16_t(bits + 1));
    const float middle = 0.5f * (low + high);
    for (float value : {low, middle, std::nextafter(middle, 0.0f), std::nextafter(middle, 1e9f)}) {
      ASSERT_EQ(FloatToHalfBits(value), NearestHalf(value)) << value;
      ASSERT_EQ(FloatToHalfBits(-value), uint16_t(NearestHalf(value) | 0x8000)) << -value;
    }
  }
  EXPECT_EQ(FloatToHalfBits(65519.0f), 0x7bff);
  EXPECT_EQ(FloatToHalfBits(65520.0f), 0x7c00);
  EXPECT_EQ(FloatToHalfBits(1e10f), 0x7c00);
  EXPECT_TRUE(std::isnan(HalfBitsToFloat(FloatToHalfBits(std::nanf("")))));
}

TEST(DTypeConvertTest, BFloat16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBFloat16Bits(1.0f), 0x3f80);
  // 1 + 2^-8 is halfway between bf16 1.0 (even) and 1 + 2^-7: ties to even -> 1.0.
  EXPECT_EQ(FloatToBFloat16Bits(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even) -> up.
  EXPECT_EQ(FloatToBFloat16Bits(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(FloatToBFloat16Bits(std::nextafter(1.0f + std::ldexp(1.0f, -8), 2.0f)), 0x3f81);
  EXPECT_TRUE(std::isnan(BFloat16BitsToFloat(FloatToBFloat16Bits(std::nanf("")))));
  EXPECT_EQ(BFloat16BitsToFloat(FloatToBFloat16Bits(-2.5f)), -2.5f);
}

}  // namespace
}  // namespace ferrum_kv
