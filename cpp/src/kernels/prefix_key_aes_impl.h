// The AES scheme's chains (prefix_key_aes.h) for one register width, internal: included by
// prefix_key_aesni.cc (128-bit AES-NI registers, one AES block each) and prefix_key_vaes.cc
// (512-bit VAES registers, four AES blocks each), each compiled for its instruction set.
//
// Lanes, the width's operations:
//   Reg                      the register type
//   kBlocks                  AES blocks per register
//   kRegs                    registers in flight: kRegs * kBlocks independent encryptions hide
//                            the instructions' latency and fill the AES units
//   Broadcast(x)             x in every block of a register
//   Pack(v) / Unpack(r, v)   kBlocks 128-bit values <-> one register
//   Xor, Enc, EncLast        the xor, AES round and last AES round of every block
//
// No std:: templates here: their out-of-line copies would be compiled for the including file's
// instruction set, and the linker may keep any file's copy for the whole library
// (tests/cpp/isa_objects_test.sh checks the objects).
//
// Thread safety: pure functions.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "prefix_key_aes.h"

namespace ferrum_kv::kernels {

template <typename Lanes>
class AesChains {
 public:
  // AesChainMany (prefix_key_aes.h).
  static void ChainMany(const AesRoundKeys& token_key, const AesRoundKeys& chain_key,
                        const KeyChainJob* jobs, int64_t n, int32_t block_size) {
    int64_t j = 0;
    while (j < n && jobs[j].num_blocks == 1) ++j;
    if (j == n) {  // one block each
      ChainOneBlockEach(token_key, chain_key, jobs, n, block_size);
      return;
    }
    Digester digester(token_key, block_size);
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t b = 0; b < jobs[j].num_blocks; ++b) {
        digester.Add(jobs[j].tokens + b * block_size, &jobs[j].out[b]);
      }
    }
    digester.Flush();
    Link(chain_key, jobs, n);
  }

 private:
  using Reg = typename Lanes::Reg;
  static constexpr int kRegs = Lanes::kRegs;
  static constexpr int kWays = Lanes::kRegs * Lanes::kBlocks;  // encryptions side by side

  struct Schedule {
    Reg round[11];
    explicit Schedule(const AesRoundKeys& key) {
      for (int r = 0; r < 11; ++r) {
        round[r] =
            Lanes::Broadcast(_mm_load_si128(reinterpret_cast<const __m128i*>(key.bytes[r])));
      }
    }
  };

  // s = AES(key, s) in every block, round by round across the registers.
  static void Encrypt(Reg (&s)[kRegs], const Schedule& key) {
    for (Reg& x : s) x = Lanes::Xor(x, key.round[0]);
    for (int r = 1; r < 10; ++r) {
      for (Reg& x : s) x = Lanes::Enc(x, key.round[r]);
    }
    for (Reg& x : s) x = Lanes::EncLast(x, key.round[10]);
  }

  // s = v, with v one 128-bit value per way.
  static void FromWays(const __m128i (&v)[kWays], Reg (&s)[kRegs]) {
    for (int g = 0; g < kRegs; ++g) s[g] = Lanes::Pack(v + g * Lanes::kBlocks);
  }

  // s ^= v.
  static void XorWays(Reg (&s)[kRegs], const __m128i (&v)[kWays]) {
    for (int g = 0; g < kRegs; ++g) s[g] = Lanes::Xor(s[g], Lanes::Pack(v + g * Lanes::kBlocks));
  }

  static void ToWays(const Reg (&s)[kRegs], __m128i (&v)[kWays]) {
    for (int g = 0; g < kRegs; ++g) Lanes::Unpack(s[g], v + g * Lanes::kBlocks);
  }

  static __m128i LoadKey(const PrefixKey& key) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(&key));
  }

  static void StoreKey(PrefixKey* key, __m128i value) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(key), value);
  }

  // Token ids [first, first + 4) of a block as 16 bytes, zero past block_size.
  static __m128i Chunk(const int32_t* block, int32_t first, int32_t block_size) {
    if (first + 4 <= block_size) {
      return _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + first));
    }
    alignas(16) int32_t tail[4] = {0, 0, 0, 0};
    std::memcpy(tail, block + first, size_t(block_size - first) * sizeof(int32_t));
    return _mm_load_si128(reinterpret_cast<const __m128i*>(tail));
  }

  // s = the CBC-MAC digests of blocks[w].
  static void Digest(const int32_t* const (&blocks)[kWays], int32_t block_size,
                     const Schedule& key, Reg (&s)[kRegs]) {
    __m128i chunk[kWays];
    for (int w = 0; w < kWays; ++w) chunk[w] = Chunk(blocks[w], 0, block_size);
    FromWays(chunk, s);
    Encrypt(s, key);
    for (int32_t first = 4; first < block_size; first += 4) {
      for (int w = 0; w < kWays; ++w) chunk[w] = Chunk(blocks[w], first, block_size);
      XorWays(s, chunk);
      Encrypt(s, key);
    }
  }

  // Collects blocks, kWays at a time, and writes each block's digest to its out slot.
  class Digester {
   public:
    Digester(const AesRoundKeys& token_key, int32_t block_size)
        : key_(token_key), block_size_(block_size) {}

    void Add(const int32_t* block, PrefixKey* out) {
      blocks_[count_] = block;
      out_[count_] = out;
      if (++count_ == kWays) Flush();
    }

    void Flush() {
      if (count_ == 0) return;
      for (int w = count_; w < kWays; ++w) blocks_[w] = blocks_[0];  // idle ways repeat way 0
      Reg s[kRegs];
      Digest(blocks_, block_size_, key_, s);
      __m128i digest[kWays];
      ToWays(s, digest);
      for (int w = 0; w < count_; ++w) StoreKey(out_[w], digest[w]);
      count_ = 0;
    }

   private:
    const Schedule key_;
    const int32_t block_size_;
    const int32_t* blocks_[kWays];
    PrefixKey* out_[kWays];
    int count_ = 0;
  };

  // With every job's digests in its out array, replaces them by the chain keys, kWays chains
  // side by side.
  static void Link(const AesRoundKeys& chain_key, const KeyChainJob* jobs, int64_t n) {
    const Schedule key(chain_key);
    for (int64_t group = 0; group < n; group += kWays) {
      const int count = n - group < kWays ? int(n - group) : kWays;
      __m128i parent[kWays];
      int64_t length[kWays];
      PrefixKey* out[kWays];
      int64_t longest = 0;
      for (int w = 0; w < kWays; ++w) {
        const KeyChainJob& job = jobs[group + (w < count ? w : 0)];
        parent[w] = LoadKey(job.parent);
        length[w] = w < count ? job.num_blocks : 0;
        out[w] = job.out;
        if (length[w] > longest) longest = length[w];
      }
      Reg s[kRegs];
      FromWays(parent, s);
      for (int64_t b = 0; b < longest; ++b) {
        __m128i digest[kWays];
        for (int w = 0; w < kWays; ++w) {
          digest[w] = b < length[w] ? LoadKey(out[w][b]) : _mm_setzero_si128();
        }
        XorWays(s, digest);
        Encrypt(s, key);
        __m128i keys[kWays];
        ToWays(s, keys);
        for (int w = 0; w < kWays; ++w) {
          if (b < length[w]) StoreKey(&out[w][b], keys[w]);
        }
      }
    }
  }

  // ChainMany when every job has one block (a decode step's publications): digest and link in
  // one pass, kWays jobs at a time.
  static void ChainOneBlockEach(const AesRoundKeys& token_key, const AesRoundKeys& chain_key,
                                const KeyChainJob* jobs, int64_t n, int32_t block_size) {
    const Schedule digest_key(token_key);
    const Schedule link_key(chain_key);
    for (int64_t group = 0; group < n; group += kWays) {
      const int count = n - group < kWays ? int(n - group) : kWays;
      const int32_t* blocks[kWays];
      __m128i parent[kWays];
      for (int w = 0; w < kWays; ++w) {
        const KeyChainJob& job = jobs[group + (w < count ? w : 0)];
        blocks[w] = job.tokens;
        parent[w] = LoadKey(job.parent);
      }
      Reg s[kRegs];
      Digest(blocks, block_size, digest_key, s);
      XorWays(s, parent);
      Encrypt(s, link_key);
      __m128i keys[kWays];
      ToWays(s, keys);
      for (int w = 0; w < count; ++w) StoreKey(jobs[group + w].out, keys[w]);
    }
  }
};

}  // namespace ferrum_kv::kernels
