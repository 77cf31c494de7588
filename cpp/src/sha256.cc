#include "sha256.h"

#include <cpuid.h>

#include <cstring>

namespace ferrum_kv::sha256 {
namespace {

uint32_t RotateRight(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

uint32_t LoadBigEndian32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | uint32_t{p[3]};
}

void StoreBigEndian32(uint32_t x, uint8_t* p) {
  p[0] = uint8_t(x >> 24);
  p[1] = uint8_t(x >> 16);
  p[2] = uint8_t(x >> 8);
  p[3] = uint8_t(x);
}

}  // namespace

const uint32_t kRoundConstants[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u,
    0xab1c5ed5u, 0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu,
    0x9bdc06a7u, 0xc19bf174u, 0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu,
    0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau, 0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
    0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u, 0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu,
    0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u, 0xa2bfe8a1u, 0xa81a664bu,
    0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u, 0x19a4c116u,
    0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u,
    0xc67178f2u};

void CompressPortable(State* state, const uint8_t* blocks, size_t num_blocks) {
  for (; num_blocks > 0; --num_blocks, blocks += kBlockBytes) {
    uint32_t w[64];  // the message schedule W0..W63 (FIPS 180-4 6.2.2 step 1)
    for (int t = 0; t < 16; ++t) w[t] = LoadBigEndian32(blocks + 4 * t);
    for (int t = 16; t < 64; ++t) {
      const uint32_t s0 = RotateRight(w[t - 15], 7) ^ RotateRight(w[t - 15], 18) ^ (w[t - 15] >> 3);
      const uint32_t s1 = RotateRight(w[t - 2], 17) ^ RotateRight(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t] = s1 + w[t - 7] + s0 + w[t - 16];
    }
    uint32_t a = state->h[0], b = state->h[1], c = state->h[2], d = state->h[3];
    uint32_t e = state->h[4], f = state->h[5], g = state->h[6], h = state->h[7];
    for (int t = 0; t < 64; ++t) {
      const uint32_t sigma1 = RotateRight(e, 6) ^ RotateRight(e, 11) ^ RotateRight(e, 25);
      const uint32_t choose = (e & f) ^ (~e & g);
      const uint32_t t1 = h + sigma1 + choose + kRoundConstants[t] + w[t];
      const uint32_t sigma0 = RotateRight(a, 2) ^ RotateRight(a, 13) ^ RotateRight(a, 22);
      const uint32_t majority = (a & b) ^ (a & c) ^ (b & c);
      const uint32_t t2 = sigma0 + majority;
      h = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    state->h[0] += a;
    state->h[1] += b;
    state->h[2] += c;
    state->h[3] += d;
    state->h[4] += e;
    state->h[5] += f;
    state->h[6] += g;
    state->h[7] += h;
  }
}

bool CpuHasShaNi() {
  // gcc 12 has no __builtin_cpu_supports("sha"): read the feature bits directly.
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  const bool sse41 = (ecx & bit_SSE4_1) != 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const bool sha = (ebx & bit_SHA) != 0;  // leaf 7, ebx bit 29
  return sse41 && sha;
}

CompressFn BestCompress() {
  static const CompressFn best = CpuHasShaNi() ? CompressShaNi : CompressPortable;
  return best;
}

const char* BestCompressName() { return BestCompress() == CompressShaNi ? "sha-ni" : "portable"; }

void WritePadding(uint8_t* end, size_t len) {
  const size_t padding = PaddedSize(len) - len;
  end[0] = 0x80;
  std::memset(end + 1, 0, padding - 9);
  const uint64_t bits = uint64_t{len} * 8;
  StoreBigEndian32(uint32_t(bits >> 32), end + padding - 8);
  StoreBigEndian32(uint32_t(bits), end + padding - 4);
}

void WriteDigest(const State& state, uint8_t* digest) {
  for (int i = 0; i < 8; ++i) StoreBigEndian32(state.h[i], digest + 4 * i);
}

void Hash(const uint8_t* data, size_t len, CompressFn compress, uint8_t* digest) {
  State state = kInitialState;
  const size_t full_blocks = len / kBlockBytes;
  compress(&state, data, full_blocks);
  // The rest of the message and its padding fill one or two more blocks.
  uint8_t tail[2 * kBlockBytes];
  const size_t rest = len - full_blocks * kBlockBytes;
  if (rest > 0) std::memcpy(tail, data + full_blocks * kBlockBytes, rest);  // data may be null
  WritePadding(tail + rest, len);
  compress(&state, tail, PaddedSize(rest) / kBlockBytes);
  WriteDigest(state, digest);
}

}  // namespace ferrum_kv::sha256
