#include "bindings.h"
#include "dlpack_export.h"

#ifndef FKV_VERSION
#define FKV_VERSION "0.0.0+unknown"
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "ferrum-kv C++ core: block pool, paged KV storage, cache manager, kernels, prefix hashes.";
  m.attr("__version__") = FKV_VERSION;
  ferrum_kv::bindings::BindErrors(m);
  ferrum_kv::bindings::BindBFloat16Array(m);
  ferrum_kv::bindings::BindConfig(m);
  ferrum_kv::bindings::BindBlockPool(m);
  ferrum_kv::bindings::BindKvStorage(m);
  ferrum_kv::bindings::BindCacheManager(m);
  ferrum_kv::bindings::BindAttention(m);
  ferrum_kv::bindings::BindBlockHash(m);
  ferrum_kv::bindings::BindParallel(m);
  ferrum_kv::bindings::BindTiers(m);
}
