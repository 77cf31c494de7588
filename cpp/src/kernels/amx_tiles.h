// Whether this process may run AMX tile instructions with INT8 dot products (AMX-TILE, AMX-INT8):
// the CPU reports them (CPUID leaf 7), the OS saves tile state (XCR0 bits 17 and 18), and on
// Linux the kernel has granted this process tile data (arch_prctl ARCH_REQ_XCOMP_PERM; without
// the grant the first tile instruction raises SIGILL). The grant is requested on the first call
// and holds for every thread of the process.
// Thread safety: safe from any thread (the answer is computed once). Errors: none (false).
#pragma once

namespace ferrum_kv::kernels {

bool AmxInt8Usable();

}  // namespace ferrum_kv::kernels
