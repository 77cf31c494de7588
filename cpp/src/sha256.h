// SHA-256 (FIPS 180-4), internal to the core: the compression function in two implementations
// (portable C++ and the x86 SHA extensions), the run-time choice between them, and the padding and
// digest encoding that callers need to hash a whole message.
//
// Thread safety: every function is a pure function of its arguments (reentrant).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ferrum_kv::sha256 {

inline constexpr size_t kBlockBytes = 64;
inline constexpr size_t kDigestBytes = 32;

// The chaining value H0..H7.
struct State {
  uint32_t h[8];
};
inline constexpr State kInitialState = {{0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                         0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u}};
// The round constants K0..K63, shared by both implementations.
extern const uint32_t kRoundConstants[64];

// Applies the compression function to num_blocks consecutive 64-byte message blocks.
using CompressFn = void (*)(State* state, const uint8_t* blocks, size_t num_blocks);
void CompressPortable(State* state, const uint8_t* blocks, size_t num_blocks);
// Requires CpuHasShaNi() (it executes SHA, SSE4.1 and SSSE3 instructions).
void CompressShaNi(State* state, const uint8_t* blocks, size_t num_blocks);

// True where the CPU has the SHA extensions and SSE4.1 (cpuid; SSE4.1 implies SSSE3).
bool CpuHasShaNi();
// CompressShaNi where the CPU has it, CompressPortable otherwise; decided once per process.
CompressFn BestCompress();
// "sha-ni" or "portable": which one BestCompress returns.
const char* BestCompressName();

// Length of a len-byte message after padding: the next multiple of 64 that is >= len + 9.
constexpr size_t PaddedSize(size_t len) {
  return (len + 9 + kBlockBytes - 1) / kBlockBytes * kBlockBytes;
}
// Writes the padding of a len-byte message, 0x80, zeros and the 64-bit big-endian length in bits,
// PaddedSize(len) - len bytes, starting at end (the byte after the message's last).
void WritePadding(uint8_t* end, size_t len);
// Writes the digest of a finished state: H0..H7 as big-endian words, 32 bytes.
void WriteDigest(const State& state, uint8_t* digest);
// SHA-256 of data[0, len) using compress: 32 bytes to digest.
void Hash(const uint8_t* data, size_t len, CompressFn compress, uint8_t* digest);

}  // namespace ferrum_kv::sha256
