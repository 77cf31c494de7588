// The tile kernel for AVX-512 (F/BW/VL/DQ), exact precision (vector operations in
// attention_isa_avx512.h).
#include <immintrin.h>

// GCC 12 reports the deliberately undefined source operand inside its own intrinsic headers
// (_mm512_undefined_ps / _mm256_undefined_pd in the reductions and conversions) as
// (maybe-)uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "kernels/attention_isa_avx512.h"
#include "kernels/attention_tile_impl.h"

namespace ferrum_kv::kernels {

void AttentionTileAvx512(const AttentionTile& tile) { RunAttentionTile<Avx512>(tile); }

}  // namespace ferrum_kv::kernels
