#include <immintrin.h>

#include "prefix_key_aes.h"
#include "prefix_key_aes_impl.h"

namespace ferrum_kv::kernels {
namespace {

// One AES block per 128-bit register, 8 in flight: AESENC has a latency of about 4 cycles and
// issues up to 2 per cycle on current x86 cores.
struct XmmLanes {
  using Reg = __m128i;
  static constexpr int kBlocks = 1;
  static constexpr int kRegs = 8;
  static Reg Broadcast(__m128i x) { return x; }
  static Reg Pack(const __m128i* v) { return v[0]; }
  static void Unpack(Reg r, __m128i* v) { v[0] = r; }
  static Reg Xor(Reg a, Reg b) { return _mm_xor_si128(a, b); }
  static Reg Enc(Reg x, Reg key) { return _mm_aesenc_si128(x, key); }
  static Reg EncLast(Reg x, Reg key) { return _mm_aesenclast_si128(x, key); }
};

template <int kRound>
__m128i NextRoundKey(__m128i key) {
  const __m128i assist = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(key, kRound), 0xff);
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  return _mm_xor_si128(key, assist);
}

}  // namespace

void AesExpandKey(const uint8_t key[16], AesRoundKeys* out) {
  __m128i k[11];
  k[0] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key));
  k[1] = NextRoundKey<0x01>(k[0]);
  k[2] = NextRoundKey<0x02>(k[1]);
  k[3] = NextRoundKey<0x04>(k[2]);
  k[4] = NextRoundKey<0x08>(k[3]);
  k[5] = NextRoundKey<0x10>(k[4]);
  k[6] = NextRoundKey<0x20>(k[5]);
  k[7] = NextRoundKey<0x40>(k[6]);
  k[8] = NextRoundKey<0x80>(k[7]);
  k[9] = NextRoundKey<0x1b>(k[8]);
  k[10] = NextRoundKey<0x36>(k[9]);
  for (int r = 0; r < 11; ++r) _mm_store_si128(reinterpret_cast<__m128i*>(out->bytes[r]), k[r]);
}

void AesEncryptBlock(const AesRoundKeys& key, const uint8_t in[16], uint8_t out[16]) {
  const auto round_key = [&key](int r) {
    return _mm_load_si128(reinterpret_cast<const __m128i*>(key.bytes[r]));
  };
  __m128i s = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in)), round_key(0));
  for (int r = 1; r < 10; ++r) s = _mm_aesenc_si128(s, round_key(r));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_aesenclast_si128(s, round_key(10)));
}

void AesChainManyAesNi(const AesRoundKeys& token_key, const AesRoundKeys& chain_key,
                       const KeyChainJob* jobs, int64_t n, int32_t block_size) {
  AesChains<XmmLanes>::ChainMany(token_key, chain_key, jobs, n, block_size);
}

}  // namespace ferrum_kv::kernels
