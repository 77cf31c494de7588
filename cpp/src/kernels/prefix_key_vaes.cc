#include <immintrin.h>

#include "prefix_key_aes.h"
#include "prefix_key_aes_impl.h"

namespace ferrum_kv::kernels {
namespace {

// Four AES blocks per 512-bit register, 4 registers in flight: on Zen 4 this doubles the AES
// throughput of 128-bit AES-NI (which 8 blocks in flight already saturate), once 16 blocks are
// in flight.
struct ZmmLanes {
  using Reg = __m512i;
  static constexpr int kBlocks = 4;
  static constexpr int kRegs = 4;
  // (A masked broadcast: GCC 12 warns about the unmasked one's undefined input.)
  static Reg Broadcast(__m128i x) { return _mm512_maskz_broadcast_i32x4(0xffff, x); }
  static Reg Pack(const __m128i* v) {
    Reg r = _mm512_zextsi128_si512(v[0]);
    r = _mm512_inserti32x4(r, v[1], 1);
    r = _mm512_inserti32x4(r, v[2], 2);
    return _mm512_inserti32x4(r, v[3], 3);
  }
  static void Unpack(Reg r, __m128i* v) { _mm512_storeu_si512(v, r); }
  static Reg Xor(Reg a, Reg b) { return _mm512_xor_si512(a, b); }
  static Reg Enc(Reg x, Reg key) { return _mm512_aesenc_epi128(x, key); }
  static Reg EncLast(Reg x, Reg key) { return _mm512_aesenclast_epi128(x, key); }
};

}  // namespace

void AesChainManyVaes(const AesRoundKeys& token_key, const AesRoundKeys& chain_key,
                      const KeyChainJob* jobs, int64_t n, int32_t block_size) {
  AesChains<ZmmLanes>::ChainMany(token_key, chain_key, jobs, n, block_size);
}

}  // namespace ferrum_kv::kernels
