// The quantized formats (kv_format.h): FP8 codecs against an independent float64 model, the row
// quantizers' error bounds, every ISA variant bit-identical to the scalar definition, the
// validation of non-finite input, and the KvStorage write / read paths.
#include "ferrum_kv/quantize.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "ferrum_kv/dtype_convert.h"
#include "ferrum_kv/errors.h"
#include "ferrum_kv/kv_format.h"
#include "ferrum_kv/kv_storage.h"

namespace ferrum_kv {
namespace {

constexpr DType kQuantized[] = {DType::kInt8, DType::kFp8E4M3, DType::kFp8E5M2, DType::kInt4};
constexpr int64_t kHeadDims[] = {1, 2, 7, 16, 17, 31, 32, 33, 64, 72, 80, 96, 128, 256};

std::vector<AttentionIsa> SimdIsas() {
  std::vector<AttentionIsa> isas;
  for (AttentionIsa isa : {AttentionIsa::kAvx2, AttentionIsa::kAvx512}) {
    if (AttentionIsaSupported(isa)) isas.push_back(isa);
  }
  return isas;
}

// The value of an FP8 code from its fields, in float64 (independent of DecodeFp8).
double Fp8Value(uint8_t code, int bias, int mantissa_bits) {
  const int exponent = (code & 0x7f) >> mantissa_bits;
  const int mantissa = code & ((1 << mantissa_bits) - 1);
  const double sign = (code & 0x80) ? -1.0 : 1.0;
  if (exponent == 0) return sign * std::ldexp(double(mantissa), 1 - bias - mantissa_bits);
  return sign * std::ldexp(1.0 + double(mantissa) / (1 << mantissa_bits), exponent - bias);
}

TEST(QuantizeTest, EveryFp8CodeDecodesExactly) {
  for (int c = 0; c < 256; ++c) {
    const uint8_t code = uint8_t(c);
    const float e4m3 = DecodeFp8(code, kE4M3);
    if ((c & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(e4m3)) << c;
    } else {
      EXPECT_EQ(double(e4m3), Fp8Value(code, 7, 3)) << c;
      EXPECT_EQ(std::signbit(e4m3), (c & 0x80) != 0) << c;
    }
    const float e5m2 = DecodeFp8(code, kE5M2);
    if ((c & 0x7f) == 0x7c) {
      EXPECT_EQ(e5m2, (c & 0x80) ? -INFINITY : INFINITY) << c;
    } else if ((c & 0x7f) > 0x7c) {
      EXPECT_TRUE(std::isnan(e5m2)) << c;
    } else {
      EXPECT_EQ(double(e5m2), Fp8Value(code, 15, 2)) << c;
    }
  }
  EXPECT_EQ(DecodeFp8(0x7e, kE4M3), 448.0f);
  EXPECT_EQ(DecodeFp8(0x7b, kE5M2), 57344.0f);
  EXPECT_EQ(DecodeFp8(0x01, kE4M3), std::ldexp(1.0f, -9));
  EXPECT_EQ(DecodeFp8(0x01, kE5M2), std::ldexp(1.0f, -16));
}

// Every finite code round-trips, every midpoint between neighbours goes to the even code, and
// values just off a midpoint go to the nearer code; beyond the largest finite value saturates.
TEST(QuantizeTest, Fp8EncodeRoundsToNearestEvenAndSaturates) {
  for (const Fp8Spec* spec : {&kE4M3, &kE5M2}) {
    for (uint32_t c = 0; c < spec->max_code; ++c) {
      const float a = DecodeFp8(uint8_t(c), *spec), b = DecodeFp8(uint8_t(c + 1), *spec);
      EXPECT_EQ(EncodeFp8(a, *spec), c);
      EXPECT_EQ(EncodeFp8(-a, *spec), c | 0x80u);
      const float mid = float((double(a) + double(b)) / 2);  // exact in float32
      EXPECT_EQ(EncodeFp8(mid, *spec), (c % 2 == 0) ? c : c + 1) << c;
      EXPECT_EQ(EncodeFp8(std::nextafter(mid, 0.0f), *spec), c) << c;
      EXPECT_EQ(EncodeFp8(std::nextafter(mid, INFINITY), *spec), c + 1) << c;
    }
    EXPECT_EQ(EncodeFp8(spec->max_value, *spec), spec->max_code);
    EXPECT_EQ(EncodeFp8(spec->max_value * 1.2f, *spec), spec->max_code);
    EXPECT_EQ(EncodeFp8(-3.0e38f, *spec), spec->max_code | 0x80u);
    EXPECT_EQ(EncodeFp8(1e-30f, *spec), 0u);
  }
}

struct Rows {
  std::vector<float> x;
  int64_t rows, d;
};

// N(0, 1) rows with a few outlier channels (x 30) and some special rows: constant, all zero,
// mixed-sign zeros, one outlier element.
Rows MakeRows(int64_t d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Rows r{{}, 12, d};
  r.x.resize(size_t(r.rows * d));
  for (int64_t i = 0; i < r.rows * d; ++i) {
    r.x[i] = normal(rng) * ((i % d) % 13 == 5 ? 30.0f : 1.0f);
  }
  for (int64_t i = 0; i < d; ++i) {
    r.x[size_t(1 * d + i)] = 2.75f;                        // constant
    r.x[size_t(2 * d + i)] = 0.0f;                         // zero
    r.x[size_t(3 * d + i)] = (i % 2) ? -0.0f : 0.0f;       // mixed-sign zeros
    r.x[size_t(4 * d + i)] = i == d / 2 ? 1000.0f : 0.01f; // one outlier
    r.x[size_t(5 * d + i)] = 1e-40f * float(i % 5);        // subnormal
  }
  return r;
}

struct Quantized {
  std::vector<uint8_t> codes;
  std::vector<float> params;
};

Quantized Quantize(DType dtype, const Rows& r, AttentionIsa isa) {
  const HeadRegionLayout layout = HeadRegion(dtype, r.d, 1);
  Quantized q{std::vector<uint8_t>(size_t(r.rows * layout.row_code_bytes), 0xAA),
              std::vector<float>(size_t(r.rows * layout.params_per_row), -7.0f)};
  QuantizeRows(dtype, r.x.data(), DType::kFloat32, r.rows, r.d, q.codes.data(),
               layout.row_code_bytes, reinterpret_cast<uint8_t*>(q.params.data()),
               layout.row_params_bytes(), isa);
  return q;
}

TEST(QuantizeTest, SimdVariantsAreBitIdenticalToTheScalarDefinition) {
  for (DType dtype : kQuantized) {
    for (int64_t d : kHeadDims) {
      const Rows r = MakeRows(d, uint32_t(d));
      const HeadRegionLayout layout = HeadRegion(dtype, d, 1);
      // The scalar definition, row by row.
      Quantized expected{std::vector<uint8_t>(size_t(r.rows * layout.row_code_bytes)),
                         std::vector<float>(size_t(r.rows * layout.params_per_row))};
      for (int64_t row = 0; row < r.rows; ++row) {
        QuantizeRow(dtype, &r.x[size_t(row * d)], d,
                    &expected.codes[size_t(row * layout.row_code_bytes)],
                    &expected.params[size_t(row * layout.params_per_row)]);
      }
      std::vector<AttentionIsa> isas = SimdIsas();
      isas.push_back(AttentionIsa::kPortable);
      for (AttentionIsa isa : isas) {
        const Quantized got = Quantize(dtype, r, isa);
        EXPECT_EQ(got.codes, expected.codes) << DTypeName(dtype) << " d=" << d << " "
                                             << AttentionIsaName(isa);
        EXPECT_EQ(0, std::memcmp(got.params.data(), expected.params.data(),
                                 expected.params.size() * sizeof(float)))
            << DTypeName(dtype) << " d=" << d << " " << AttentionIsaName(isa);
      }
    }
  }
}

// Each element within half a code step (int: scale / 2 of its group; fp8: half the spacing of the
// FP8 values around x / scale, times scale), plus float32 rounding of the decode.
TEST(QuantizeTest, EveryElementWithinItsBound) {
  for (DType dtype : kQuantized) {
    for (int64_t d : kHeadDims) {
      const Rows r = MakeRows(d, 100 + uint32_t(d));
      const Quantized q = Quantize(dtype, r, AttentionIsa::kAuto);
      const HeadRegionLayout layout = HeadRegion(dtype, d, 1);
      std::vector<float> back(static_cast<size_t>(d));
      for (int64_t row = 0; row < r.rows; ++row) {
        const float* params = &q.params[size_t(row * layout.params_per_row)];
        DequantizeRow(dtype, &q.codes[size_t(row * layout.row_code_bytes)], params, d, back.data());
        for (int64_t i = 0; i < d; ++i) {
          const double x = r.x[size_t(row * d + i)];
          double bound;
          if (dtype == DType::kInt8 || dtype == DType::kInt4) {
            const double scale = params[dtype == DType::kInt8 ? 0 : 2 * (i / kInt4GroupSize)];
            // 2e-43: subnormal scales (row 5) carry a relative error of up to 1e-3.
            bound = scale / 2 * (1 + 1e-5) + 4e-7 * std::fabs(x) + 2e-43;
          } else {
            const Fp8Spec& spec = dtype == DType::kFp8E4M3 ? kE4M3 : kE5M2;
            const double scale = params[0];
            const double y = std::fabs(x) / scale;
            // Spacing of FP8 values at y: 2^(max(e, 1 - bias) - mantissa_bits).
            const int e = y > 0 ? std::ilogb(y) : 1 - spec.exponent_bias;
            const double ulp =
                std::ldexp(1.0, std::max(e, 1 - spec.exponent_bias) - spec.mantissa_bits);
            bound = scale == 0 ? 1e-44
                               : (ulp / 2 * scale) * (1 + 1e-5) + 4e-7 * std::fabs(x) + 2e-43;
          }
          // A subnormal scale (rows below about 1e-33) has few significant bits: such rows are
          // only kept within their own magnitude.
          const float* row_x = &r.x[size_t(row * d)];
          if (params[0] < std::numeric_limits<float>::min()) {
            bound = std::max(bound, double(AbsMax(row_x, d)));
          }
          ASSERT_LE(std::fabs(double(back[size_t(i)]) - x), bound)
              << DTypeName(dtype) << " d=" << d << " row " << row << " i " << i << " x " << x;
        }
      }
    }
  }
}

TEST(QuantizeTest, ConstantRowsReadBackExactly) {
  for (DType dtype : kQuantized) {
    for (int64_t d : {int64_t{17}, int64_t{72}, int64_t{128}}) {
      for (float value : {0.0f, 2.75f, -1e-3f}) {
        const std::vector<float> row(static_cast<size_t>(d), value);
        const HeadRegionLayout layout = HeadRegion(dtype, d, 1);
        std::vector<uint8_t> codes(size_t(layout.row_code_bytes));
        std::vector<float> params(size_t(layout.params_per_row)), back(static_cast<size_t>(d));
        for (AttentionIsa isa : {AttentionIsa::kPortable, AttentionIsa::kAuto}) {
          QuantizeRows(dtype, row.data(), DType::kFloat32, 1, d, codes.data(), 0,
                       reinterpret_cast<uint8_t*>(params.data()), 0, isa);
          DequantizeRow(dtype, codes.data(), params.data(), d, back.data());
          const bool symmetric = dtype == DType::kFp8E4M3 || dtype == DType::kFp8E5M2;
          if (!symmetric || value == 0.0f) {
            EXPECT_EQ(back, row) << DTypeName(dtype) << " " << value;
          } else {  // code 448 (57344) times scale = value / 448: within the two roundings
            for (float b : back) EXPECT_NEAR(b, value, 2.5e-7 * std::fabs(value)) << DTypeName(dtype);
          }
        }
      }
    }
  }
}

TEST(QuantizeTest, Int4PacksNibblesAndShortLastGroup) {
  const int64_t d = 37;  // groups of 32 and 5; odd: the last high nibble stays 0
  std::vector<float> row(static_cast<size_t>(d));
  for (int64_t i = 0; i < d; ++i) row[size_t(i)] = float(i < 32 ? i % 16 : 100 + 15 * (i - 32));
  std::vector<uint8_t> codes(19);
  std::vector<float> params(4);
  QuantizeRows(DType::kInt4, row.data(), DType::kFloat32, 1, d, codes.data(), 0,
               reinterpret_cast<uint8_t*>(params.data()), 0);
  EXPECT_EQ(params[0], 1.0f);    // group 0: 0..15
  EXPECT_EQ(params[1], 0.0f);
  EXPECT_EQ(params[2], 4.0f);    // group 1: 100..160 over 15 steps
  EXPECT_EQ(params[3], 100.0f);
  EXPECT_EQ(codes[0], 0x10);     // elements 0 and 1
  EXPECT_EQ(codes[7], 0xfe);     // elements 14 and 15
  // group 1, elements 32..36 = 100, 115, 130, 145, 160 -> codes 0, 3.75 -> 4, 7.5 -> 8, 11.25 ->
  // 11, 15
  EXPECT_EQ(codes[16], 0x40);
  EXPECT_EQ(codes[17], 0xb8);
  EXPECT_EQ(codes[18], 0x0f);
}

TEST(QuantizeTest, FloatHalfInputMatchesItsWidenedFloats) {
  for (DType dtype : kQuantized) {
    const Rows r = MakeRows(80, 7);
    std::vector<uint16_t> half(r.x.size());
    Rows widened = r;
    for (size_t i = 0; i < half.size(); ++i) {
      half[i] = FloatToHalfBits(std::min(r.x[i], 60000.0f));
      widened.x[i] = HalfBitsToFloat(half[i]);
    }
    const HeadRegionLayout layout = HeadRegion(dtype, r.d, 1);
    for (AttentionIsa isa : {AttentionIsa::kPortable, AttentionIsa::kAuto}) {
      const Quantized expected = Quantize(dtype, widened, AttentionIsa::kPortable);
      Quantized got{std::vector<uint8_t>(expected.codes.size()),
                    std::vector<float>(expected.params.size())};
      QuantizeRows(dtype, half.data(), DType::kFloat16, r.rows, r.d, got.codes.data(),
                   layout.row_code_bytes, reinterpret_cast<uint8_t*>(got.params.data()),
                   layout.row_params_bytes(), isa);
      EXPECT_EQ(got.codes, expected.codes) << DTypeName(dtype);
      EXPECT_EQ(0, std::memcmp(got.params.data(), expected.params.data(),
                               expected.params.size() * sizeof(float)));
    }
  }
}

TEST(QuantizeTest, FindsTheFirstUnquantizableRow) {
  std::vector<AttentionIsa> isas = SimdIsas();
  isas.push_back(AttentionIsa::kPortable);
  for (AttentionIsa isa : isas) {
    for (DType dtype : kQuantized) {
      for (int64_t d : {int64_t{17}, int64_t{128}}) {
        Rows r = MakeRows(d, 3);
        EXPECT_EQ(FindUnquantizableRow(dtype, r.x.data(), DType::kFloat32, r.rows, d, isa), -1);
        for (float bad : {NAN, INFINITY, -INFINITY}) {
          Rows b = r;
          b.x[size_t(7 * d + d - 1)] = bad;  // the last element: a tail lane for d = 17
          b.x[size_t(9 * d)] = bad;
          EXPECT_EQ(FindUnquantizableRow(dtype, b.x.data(), DType::kFloat32, b.rows, d, isa), 7)
              << DTypeName(dtype) << " " << AttentionIsaName(isa);
        }
        // max - min overflows float32: only the asymmetric formats reject it.
        Rows wide = r;
        wide.x[size_t(2 * d)] = 3e38f;
        wide.x[size_t(2 * d + 1)] = -3e38f;
        if (d > 1) {
          const int64_t expected = IsAsymmetric(dtype) ? 2 : -1;
          EXPECT_EQ(FindUnquantizableRow(dtype, wide.x.data(), DType::kFloat32, wide.rows, d, isa),
                    expected)
              << DTypeName(dtype);
        }
      }
    }
  }
}

TEST(QuantizeTest, HeadRegionGeometry) {
  // int8, head_dim 128, 16 tokens: 2048 code bytes, then 16 x (scale, offset).
  HeadRegionLayout l = HeadRegion(DType::kInt8, 128, 16);
  EXPECT_EQ(l.row_code_bytes, 128);
  EXPECT_EQ(l.params_per_row, 2);
  EXPECT_EQ(l.params_offset, 2048);
  EXPECT_EQ(l.bytes, 2048 + 128);
  // int4, head_dim 72 (groups 32, 32, 8), 5 tokens: 36 code bytes a row, 180 -> 192; params
  // 5 x 6 floats = 120 bytes; 312 -> 320.
  l = HeadRegion(DType::kInt4, 72, 5);
  EXPECT_EQ(l.row_code_bytes, 36);
  EXPECT_EQ(l.params_per_row, 6);
  EXPECT_EQ(l.params_offset, 192);
  EXPECT_EQ(l.bytes, 320);
  // fp8, head_dim 17, 3 tokens: 51 -> 64, params 12 -> 76 -> 80.
  l = HeadRegion(DType::kFp8E5M2, 17, 3);
  EXPECT_EQ(l.params_offset, 64);
  EXPECT_EQ(l.bytes, 80);
  // Float dtypes are unchanged: no padding.
  l = HeadRegion(DType::kFloat16, 17, 3);
  EXPECT_EQ(l.bytes, 17 * 3 * 2);
  CacheConfig c;
  c.num_layers = 2;
  c.num_kv_heads = 3;
  c.head_dim = 72;
  c.block_size = 5;
  c.dtype = DType::kInt4;
  EXPECT_EQ(c.BytesPerBlock(), 2 * 2 * 3 * 320);
  EXPECT_DOUBLE_EQ(c.BytesPerToken(), 2 * 2 * 3 * 320 / 5.0);
  EXPECT_EQ(ParseDType("fp8"), DType::kFp8E4M3);
  EXPECT_EQ(DTypeName(ParseDType("fp8_e5m2")), "fp8_e5m2");
  EXPECT_THROW(ParseDType("fp8_e4m4"), InvalidArgument);
}

CacheConfig StorageConfig(DType dtype) {
  CacheConfig c;
  c.num_layers = 2;
  c.num_kv_heads = 3;
  c.head_dim = 33;
  c.block_size = 5;
  c.num_blocks = 4;
  c.dtype = dtype;
  return c;
}

TEST(QuantizeTest, StorageWritesCodesWhereTheLayoutSaysAndReadsThemBack) {
  for (DType dtype : kQuantized) {
    const CacheConfig c = StorageConfig(dtype);
    KvStorage storage(c);
    const Rows k = MakeRows(c.head_dim, 11), v = MakeRows(c.head_dim, 12);
    // Token rows 0..2 of k (3 heads) at block 2, layer 1, offset 4.
    storage.WriteSlot(2, 1, 4, &k.x[0], &v.x[0], DType::kFloat32);
    const HeadRegionLayout& l = storage.head_region();
    std::vector<float> k_back(size_t(3 * c.head_dim)), v_back(k_back.size());
    storage.ReadSlot(2, 1, 4, k_back.data(), v_back.data());
    for (int32_t head = 0; head < 3; ++head) {
      for (int kv = 0; kv < 2; ++kv) {
        const Rows& src = kv ? v : k;
        std::vector<uint8_t> codes(size_t(l.row_code_bytes));
        std::vector<float> params(size_t(l.params_per_row)), expected(size_t(c.head_dim));
        QuantizeRow(dtype, &src.x[size_t(head * c.head_dim)], c.head_dim, codes.data(),
                    params.data());
        // Offsets by hand: block 2, layer 1, kv, head; row 4.
        const uint8_t* region = storage.Data() + 2 * storage.bytes_per_block() +
                                (1 * 2 * 3 + kv * 3 + head) * l.bytes;
        EXPECT_EQ(0, std::memcmp(region + 4 * l.row_code_bytes, codes.data(), codes.size()));
        EXPECT_EQ(0, std::memcmp(region + l.params_offset + 4 * l.row_params_bytes(),
                                 params.data(), size_t(l.row_params_bytes())));
        DequantizeRow(dtype, codes.data(), params.data(), c.head_dim, expected.data());
        const auto& back = kv ? v_back : k_back;
        EXPECT_EQ(0, std::memcmp(&back[size_t(head * c.head_dim)], expected.data(),
                                 expected.size() * sizeof(float)));
      }
    }
  }
}

TEST(QuantizeTest, NonFiniteInputWritesNothing) {
  for (DType dtype : kQuantized) {
    const CacheConfig c = StorageConfig(dtype);
    KvStorage storage(c);
    const Rows k = MakeRows(c.head_dim, 21);
    std::vector<int32_t> slots = {0, 7, 13, -1};
    std::vector<float> kk(size_t(4 * 3 * c.head_dim)), vv(kk.size());
    for (size_t i = 0; i < kk.size(); ++i) kk[i] = vv[i] = k.x[i % k.x.size()];
    storage.WriteTokens(0, slots.data(), 4, kk.data(), vv.data(), DType::kFloat32);
    const std::vector<uint8_t> before(storage.Data(), storage.Data() + storage.total_bytes());
    std::vector<float> bad_v = vv;
    bad_v[bad_v.size() - 40] = NAN;  // token 3 (slot -1 would skip it: still rejected)
    EXPECT_THROW(storage.WriteTokens(0, slots.data(), 4, kk.data(), bad_v.data(), DType::kFloat32),
                 InvalidArgument);
    bad_v = vv;
    bad_v[5] = INFINITY;
    EXPECT_THROW(storage.WriteSlot(1, 1, 1, kk.data(), bad_v.data(), DType::kFloat32),
                 InvalidArgument);
    EXPECT_THROW(storage.WriteSlot(1, 1, 1, kk.data(), kk.data(), DType::kBFloat16),
                 InvalidArgument);
    EXPECT_EQ(0, std::memcmp(before.data(), storage.Data(), before.size()));
  }
}

}  // namespace
}  // namespace ferrum_kv
