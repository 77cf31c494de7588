#!/bin/sh
# The kernel files compiled for an instruction set (*_avx2, *_avx512, *_avx512fast, *_avx512fp16,
# *_vaes, *_aesni, *_shani: see CMakeLists.txt) must not define weak symbols: a template's
# out-of-line body (a std::vector method, say) compiled there may be the copy the linker keeps for
# the whole library, and would then run on CPUs without that instruction set.
# Usage: isa_objects_test.sh <libferrum_kv_core.a>
set -eu
nm -C --defined-only "$1" | awk '
  /:$/ {
    isa = ($0 ~ /_(avx2|avx512|avx512fast|avx512fp16|vaes|aesni|shani)\.cc\.o:$/)
    member = $0
    next
  }
  isa && $2 == "W" { print member " " $0; bad = 1 }
  END { exit bad }'
