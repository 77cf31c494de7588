#include "kernels/amx_tiles.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <cstdint>

namespace ferrum_kv::kernels {
namespace {

#if defined(__x86_64__)
bool CpuAndOsSupportAmxInt8() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27))) return false;  // OSXSAVE
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  constexpr unsigned kAmxTile = 1u << 24, kAmxInt8 = 1u << 25;
  if ((edx & (kAmxTile | kAmxInt8)) != (kAmxTile | kAmxInt8)) return false;
  uint32_t xcr0_low = 0, xcr0_high = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
  constexpr uint32_t kTileConfig = 1u << 17, kTileData = 1u << 18;
  return (xcr0_low & (kTileConfig | kTileData)) == (kTileConfig | kTileData);
}

bool RequestTileData() {
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureTileData = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureTileData) == 0;
#else
  return false;  // other systems: not attempted
#endif
}
#endif

}  // namespace

bool AmxInt8Usable() {
#if defined(__x86_64__)
  static const bool usable = CpuAndOsSupportAmxInt8() && RequestTileData();
  return usable;
#else
  return false;
#endif
}

}  // namespace ferrum_kv::kernels
