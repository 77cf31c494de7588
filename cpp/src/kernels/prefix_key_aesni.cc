#include <immintrin.h>

#include <algorithm>

#include "prefix_key_aes.h"

namespace ferrum_kv::kernels {
namespace {

// Independent encryptions in flight: AESENC has a latency of about 4 cycles and issues up to 2
// per cycle on current x86 cores. (512-bit VAES, four blocks per instruction, measured no faster
// on Zen 4: the AES units' throughput is the limit.)
constexpr int kWays = 8;

struct Schedule {
  __m128i round[11];
  explicit Schedule(const AesRoundKeys& key) {
    for (int r = 0; r < 11; ++r) {
      round[r] = _mm_load_si128(reinterpret_cast<const __m128i*>(key.bytes[r]));
    }
  }
};

// s[w] = AES(key, s[w]) for every way, round by round across the ways.
template <int kN>
void Encrypt(__m128i (&s)[kN], const Schedule& key) {
  for (__m128i& x : s) x = _mm_xor_si128(x, key.round[0]);
  for (int r = 1; r < 10; ++r) {
    for (__m128i& x : s) x = _mm_aesenc_si128(x, key.round[r]);
  }
  for (__m128i& x : s) x = _mm_aesenclast_si128(x, key.round[10]);
}

__m128i LoadKey(const PrefixKey& key) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(&key));
}

void StoreKey(PrefixKey* key, __m128i value) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(key), value);
}

// Token ids [first, first + 4) of a block as 16 bytes, zero past block_size.
__m128i Chunk(const int32_t* block, int32_t first, int32_t block_size) {
  if (first + 4 <= block_size) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + first));
  }
  alignas(16) int32_t tail[4] = {0, 0, 0, 0};
  std::copy(block + first, block + block_size, tail);
  return _mm_load_si128(reinterpret_cast<const __m128i*>(tail));
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
    __m128i s[kWays];  // CBC-MAC: s = AES(m_1), then s = AES(s xor m_j)
    for (int w = 0; w < kWays; ++w) s[w] = Chunk(blocks_[w], 0, block_size_);
    Encrypt(s, key_);
    for (int32_t first = 4; first < block_size_; first += 4) {
      for (int w = 0; w < kWays; ++w) {
        s[w] = _mm_xor_si128(s[w], Chunk(blocks_[w], first, block_size_));
      }
      Encrypt(s, key_);
    }
    for (int w = 0; w < count_; ++w) StoreKey(out_[w], s[w]);
    count_ = 0;
  }

 private:
  const Schedule key_;
  const int32_t block_size_;
  const int32_t* blocks_[kWays];
  PrefixKey* out_[kWays];
  int count_ = 0;
};

// With every job's digests in its out array, replaces them by the chain keys, kWays chains side
// by side.
void Link(const AesRoundKeys& chain_key, const KeyChainJob* jobs, int64_t n) {
  const Schedule key(chain_key);
  for (int64_t group = 0; group < n; group += kWays) {
    const int count = int(std::min<int64_t>(kWays, n - group));
    __m128i s[kWays];
    int64_t length[kWays];
    PrefixKey* out[kWays];
    int64_t longest = 0;
    for (int w = 0; w < kWays; ++w) {
      const KeyChainJob& job = jobs[group + (w < count ? w : 0)];
      s[w] = LoadKey(job.parent);
      length[w] = w < count ? job.num_blocks : 0;
      out[w] = job.out;
      longest = std::max(longest, length[w]);
    }
    for (int64_t b = 0; b < longest; ++b) {
      __m128i digest[kWays];
      for (int w = 0; w < kWays; ++w) {
        digest[w] = b < length[w] ? LoadKey(out[w][b]) : _mm_setzero_si128();
      }
      for (int w = 0; w < kWays; ++w) s[w] = _mm_xor_si128(s[w], digest[w]);
      Encrypt(s, key);
      for (int w = 0; w < kWays; ++w) {
        if (b < length[w]) StoreKey(&out[w][b], s[w]);
      }
    }
  }
}

template <int kRound>
__m128i NextRoundKey(__m128i key) {
  const __m128i assist = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(key, kRound), 0xff);
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  return _mm_xor_si128(key, assist);
}

// AesChainMany when every job has one block (a decode step's publications): digest and link
// in one pass, kWays jobs at a time.
void ChainOneBlockEach(const AesRoundKeys& token_key, const AesRoundKeys& chain_key,
                       const KeyChainJob* jobs, int64_t n, int32_t block_size) {
  const Schedule digest_key(token_key);
  const Schedule link_key(chain_key);
  for (int64_t group = 0; group < n; group += kWays) {
    const int count = int(std::min<int64_t>(kWays, n - group));
    const KeyChainJob* job[kWays];
    for (int w = 0; w < kWays; ++w) job[w] = &jobs[group + (w < count ? w : 0)];
    __m128i s[kWays];
    for (int w = 0; w < kWays; ++w) s[w] = Chunk(job[w]->tokens, 0, block_size);
    Encrypt(s, digest_key);
    for (int32_t first = 4; first < block_size; first += 4) {
      for (int w = 0; w < kWays; ++w) {
        s[w] = _mm_xor_si128(s[w], Chunk(job[w]->tokens, first, block_size));
      }
      Encrypt(s, digest_key);
    }
    for (int w = 0; w < kWays; ++w) s[w] = _mm_xor_si128(s[w], LoadKey(job[w]->parent));
    Encrypt(s, link_key);
    for (int w = 0; w < count; ++w) StoreKey(job[w]->out, s[w]);
  }
}

}  // namespace

bool AesNiSupported() {
  return __builtin_cpu_supports("aes") && __builtin_cpu_supports("sse4.1");
}

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
  __m128i s[1] = {_mm_loadu_si128(reinterpret_cast<const __m128i*>(in))};
  Encrypt(s, Schedule(key));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), s[0]);
}

void AesChainMany(const AesRoundKeys& token_key, const AesRoundKeys& chain_key,
                  const KeyChainJob* jobs, int64_t n, int32_t block_size) {
  if (std::all_of(jobs, jobs + n, [](const KeyChainJob& job) { return job.num_blocks == 1; })) {
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

}  // namespace ferrum_kv::kernels
