// PrefixKeyer::ChainMany in SIMD lanes (internal): independent SipHash-2-4-128 key chains
// (prefix_key.h) computed 8 at a time, one per 64-bit lane of an AVX-512 register; a lane whose
// chain ends takes the next job. Results equal PrefixKeyer::Chain per job.
#pragma once

#include <cstdint>

#include "ferrum_kv/prefix_key.h"

namespace ferrum_kv::kernels {

// Requires AVX-512 F/BW/VL/DQ (KeyLanesAvx512Supported). block_size >= 1.
void ChainManyAvx512(uint64_t secret0, uint64_t secret1, const KeyChainJob* jobs, int64_t n,
                     int32_t block_size);
bool KeyLanesAvx512Supported();

}  // namespace ferrum_kv::kernels
