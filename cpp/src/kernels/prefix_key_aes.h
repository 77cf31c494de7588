// The AES scheme of PrefixKeyer (prefix_key.h), internal: AES-128 with the AES-NI instructions
// (or their 512-bit VAES form, four blocks per instruction, where the CPU has it), several
// independent encryptions interleaved to hide the instructions' latency
// (prefix_key_aes_impl.h).
//
//   digest_i = CBC-MAC(token_key, the block_size token ids of block i as little-endian uint32,
//                      zero-padded to a multiple of 16 bytes)
//   key_i    = AES(chain_key, key_{i-1} xor digest_i)      (key_{i-1} as 16 bytes: lo, hi)
//
// CBC-MAC(k, m_1 .. m_n) = c_n with c_1 = AES(k, m_1), c_j = AES(k, c_{j-1} xor m_j); over
// messages of one fixed length (here 4 * block_size bytes, padded) it is a pseudorandom function
// (Bellare, Kilian and Rogaway). The chain is CBC-MAC over the digests from the namespace's root.
// Two distinct prefixes get one key only if the AES inputs of their last blocks are equal
// (AES is a permutation): with equal last token blocks that needs equal parent keys, a collision
// one block earlier; with different ones, digests of distinct inputs under a secret key, which
// are independent of the parent keys, must differ by exactly the parents' xor, probability
// 2^-128. Keys never leave the process, so nobody sees a value to aim at.
// Digests of different blocks are independent, so they are computed side by side even within one
// chain; only the one-encryption link is serial.
//
#pragma once

#include <cstdint>

#include "ferrum_kv/prefix_key.h"

namespace ferrum_kv::kernels {

bool AesNiSupported();

// The AES-128 key schedule (FIPS-197, 5.2) of a 16-byte key.
void AesExpandKey(const uint8_t key[16], AesRoundKeys* out);
// One block: out = AES-128(key, in) (FIPS-197 Cipher). For tests.
void AesEncryptBlock(const AesRoundKeys& key, const uint8_t in[16], uint8_t out[16]);

// For each job, job.out[i] = key_i of its num_blocks full blocks, with key_{-1} = job.parent
// (outputs must not overlap inputs or each other). AesChainManyVaes where VaesSupported() and
// there are more than 8 jobs or more than 16 blocks in all, else AesChainManyAesNi; the two give
// the same keys.
void AesChainMany(const AesRoundKeys& token_key, const AesRoundKeys& chain_key,
                  const KeyChainJob* jobs, int64_t n, int32_t block_size);
// AesChainMany with 128-bit AES-NI, 8 encryptions side by side. Requires AesNiSupported().
void AesChainManyAesNi(const AesRoundKeys& token_key, const AesRoundKeys& chain_key,
                       const KeyChainJob* jobs, int64_t n, int32_t block_size);
// AES-NI, VAES and AVX-512F (512-bit AES instructions).
bool VaesSupported();
// AesChainMany with 512-bit VAES, 16 encryptions side by side. Requires VaesSupported().
void AesChainManyVaes(const AesRoundKeys& token_key, const AesRoundKeys& chain_key,
                      const KeyChainJob* jobs, int64_t n, int32_t block_size);

}  // namespace ferrum_kv::kernels
