// CPU detection and the choice of AES kernel, compiled for any x86-64 CPU (the kernel files are
// compiled for their instruction sets and run only where the CPU has them).
#include "prefix_key_aes.h"

namespace ferrum_kv::kernels {
namespace {

// The 512-bit kernel pays off once more chains run side by side than the 128-bit kernel's 8
// ways, or more than 16 blocks in all; below that its ways are mostly idle and its wider packing
// costs as much as it saves or more (measured on Zen 4, 128-bit / 512-bit: 9 one-block chains
// 146 / 81 ns, 25 chains of 35 blocks 7.6 / 5.4 µs, 1 chain of 35 blocks 773 / 700 ns, 1 chain
// of 16 blocks 328 / 324 ns, 4 chains of 4 blocks 162 / 193 ns).
constexpr int64_t kAesNiWays = 8;
constexpr int64_t kAesNiMaxBlocks = 16;

}  // namespace

bool AesNiSupported() {
  return __builtin_cpu_supports("aes") && __builtin_cpu_supports("sse4.1");
}

bool VaesSupported() {
  return AesNiSupported() && __builtin_cpu_supports("vaes") && __builtin_cpu_supports("avx512f");
}

void AesChainMany(const AesRoundKeys& token_key, const AesRoundKeys& chain_key,
                  const KeyChainJob* jobs, int64_t n, int32_t block_size) {
  static const bool vaes = VaesSupported();
  int64_t blocks = 0;
  for (int64_t j = 0; j < n && blocks <= kAesNiMaxBlocks; ++j) blocks += jobs[j].num_blocks;
  if (vaes && (n > kAesNiWays || blocks > kAesNiMaxBlocks)) {
    AesChainManyVaes(token_key, chain_key, jobs, n, block_size);
  } else {
    AesChainManyAesNi(token_key, chain_key, jobs, n, block_size);
  }
}

}  // namespace ferrum_kv::kernels
