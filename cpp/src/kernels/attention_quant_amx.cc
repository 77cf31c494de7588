// The "fast" precision's tile kernel over int8 K/V for CPUs with AMX-INT8 ("amx"):
// attention_quant_fast_impl.h with Q.K as AMX tile products (compiled with the AVX-512, VNNI and
// AMX flags; attention.cc calls it only after AmxInt8Usable(), amx_tiles.h).
//
// Q.K per group of 16 keys (the rows of an A tile, loaded straight from the block with the row
// stride: keys x 64 code bytes) and up to 8 query rows (a B tile whose 16 int32 columns are the
// rows' two digits, in the VNNI order tdpbusd reads: B row i holds columns 4 i .. 4 i + 3 of the
// chunk for each digit vector): C (16 keys x 16 digit sums) += A . B for each 64-byte chunk of
// head_dim (the last one 4-byte rounded: the bytes past head_dim meet zero digits), then each
// row's 16 keys are gathered from C as 256 hi + lo. Where 16 rows from the span's first key
// would leave the block's head region (short blocks, a span at the end of a block), the span's
// keys are first copied into a zero-padded buffer of 16 rows.
// Tiles: the configuration is loaded once per tile call and released at its end.
// Complexity: per 16 keys and 8 query rows, ceil(head_dim / 64) tdpbusd, two tile loads each,
// one tile store and 2 gathers per row.
#include <immintrin.h>

// As in attention_avx512.cc: GCC 12's intrinsic headers trip these on purpose-undefined operands.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "kernels/attention_isa_avx512.h"
#include "kernels/attention_quant_fast_impl.h"

namespace ferrum_kv::kernels {

template <class Tile>
class AmxScorer {
  using Rows = typename Tile::Rows;
  using NextSpan = typename Tile::NextSpan;
  static constexpr int kKeys = 16;        // rows of A and C
  static constexpr int kChunk = 64;       // code bytes of a key per A row: tdpbusd's depth
  static constexpr int kGroupRows = 8;    // query rows per C tile (two digit columns each)
  static constexpr int kTileBytes = 64;   // bytes per row of B and C
  static constexpr int kDigit = Tile::kDigit;
  // Tile registers (the intrinsics take literal numbers): 0 C, 1 A, 2 B, 3 A and 4 B of the
  // last chunk when head_dim is not a multiple of 64.
  static constexpr int kC = 0, kA = 1, kB = 2, kATail = 3, kBTail = 4;

  // LDTILECFG's 64-byte operand, palette 1.
  struct alignas(64) TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
  };

 public:
  AmxScorer(const AttentionTile& t, const int8_t* q8, int dp)
      : d_(t.head_dim),
        rows_(t.num_rows),
        block_size_(t.block_size),
        dp_(dp),
        full_chunks_(t.head_dim / kChunk),
        tail_bytes_((t.head_dim % kChunk + 3) / 4 * 4),
        groups_((t.num_rows + kGroupRows - 1) / kGroupRows),
        b_(size_t(groups_) * dp / kChunk * kKeys * kTileBytes, 0),
        padded_keys_(size_t(kKeys) * dp, 0) {
    // B of (group g, chunk ch), row i, byte 4 col + m: column ch * 64 + 4 i + m of digit vector
    // col of the group (row 8 g + col / 2, digit col % 2). q8 is zero from head_dim to dp.
    for (int g = 0; g < groups_; ++g) {
      for (int ch = 0; ch < dp / kChunk; ++ch) {
        int8_t* b = B(g, ch);
        for (int col = 0; col < 2 * kGroupRows; ++col) {
          const int r = g * kGroupRows + col / 2;
          if (r >= rows_) break;
          const int8_t* digits = q8 + size_t(2 * r + col % 2) * dp + ch * kChunk;
          for (int c = 0; c < kChunk; ++c) b[(c / 4) * kTileBytes + 4 * col + c % 4] = digits[c];
        }
      }
    }
    TileConfig config;
    Shape(config, kC, kKeys, kTileBytes);
    Shape(config, kA, kKeys, kChunk);
    Shape(config, kB, kChunk / 4, kTileBytes);
    if (tail_bytes_ > 0) {
      Shape(config, kATail, kKeys, tail_bytes_);
      Shape(config, kBTail, tail_bytes_ / 4, kTileBytes);
    }
    _tile_loadconfig(&config);
  }
  ~AmxScorer() { _tile_release(); }
  AmxScorer(const AmxScorer&) = delete;
  AmxScorer& operator=(const AmxScorer&) = delete;

  void Score(int32_t pos, int n, const Rows& k, float* scores, NextSpan& next) {
    const int region_rows = block_size_ - pos % block_size_;  // rows left from key pos
    const __m512i key_index = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(kKeys));
    alignas(64) int32_t c[kKeys * kKeys];
    for (int j0 = 0; j0 < n; j0 += kKeys) {
      const uint8_t* a = k.Row(j0);
      int64_t stride = k.row_elems;
      if (region_rows - j0 < kKeys) {
        for (int j = 0; j < std::min(kKeys, n - j0); ++j) {
          std::memcpy(padded_keys_.data() + size_t(j) * dp_, k.Row(j0 + j), size_t(d_));
        }
        a = padded_keys_.data();
        stride = dp_;
      }
      for (int g = 0; g < groups_; ++g) {
        _tile_zero(0);
        for (int ch = 0; ch < full_chunks_; ++ch) {
          _tile_loadd(1, a + ch * kChunk, stride);
          _tile_loadd(2, B(g, ch), kTileBytes);
          _tile_dpbusd(0, 1, 2);
        }
        if (tail_bytes_ > 0) {
          _tile_loadd(3, a + full_chunks_ * kChunk, stride);
          _tile_loadd(4, B(g, full_chunks_), kTileBytes);
          _tile_dpbusd(0, 3, 4);
        }
        _tile_stored(0, c, kTileBytes);
        for (int r = g * kGroupRows; r < std::min(rows_, (g + 1) * kGroupRows); ++r) {
          const int col = 2 * (r - g * kGroupRows);
          const __m512i hi = _mm512_i32gather_epi32(
              _mm512_add_epi32(key_index, _mm512_set1_epi32(col)), c, sizeof(int32_t));
          const __m512i lo = _mm512_i32gather_epi32(
              _mm512_add_epi32(key_index, _mm512_set1_epi32(col + 1)), c, sizeof(int32_t));
          _mm512_store_ps(scores + r * kSpanTokens + j0,
                          _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), _mm512_set1_ps(float(kDigit)),
                                          _mm512_cvtepi32_ps(lo)));
        }
      }
      next.KeysUntil(std::min(j0 + kKeys, n), n);
    }
  }

 private:
  int8_t* B(int g, int ch) {
    return b_.data() + (size_t(g) * (dp_ / kChunk) + size_t(ch)) * kKeys * kTileBytes;
  }
  static void Shape(TileConfig& config, int tile, int rows, int bytes_per_row) {
    config.rows[tile] = static_cast<uint8_t>(rows);
    config.colsb[tile] = static_cast<uint16_t>(bytes_per_row);
  }

  const int d_, rows_, block_size_, dp_, full_chunks_, tail_bytes_, groups_;
  // The B tiles of every (group, chunk), 16 rows of 64 bytes each.
  std::vector<int8_t> b_;
  // 16 key rows of dp bytes, for keys whose 16 rows would leave the head region.
  std::vector<uint8_t> padded_keys_;
};

void AttentionTileAmxQuantFast(const AttentionTile& tile) {
  switch (tile.dtype) {
    case DType::kInt8: return QuantFastTile<Avx512, DType::kInt8, AmxScorer>::Run(tile);
    default: return AttentionTileAvx512QuantFast(tile);  // no AMX kernel: the AVX-512 one
  }
}

}  // namespace ferrum_kv::kernels
