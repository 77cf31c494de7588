// The Python bindings: one Bind<Component>() per file, called in order by module.cc.
// This folder is the only place that includes pybind11.
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "ferrum_kv/block_pool.h"
#include "ferrum_kv/cache_manager.h"
#include "ferrum_kv/config.h"
#include "ferrum_kv/kv_storage.h"

namespace ferrum_kv::bindings {

// The caster of a bound class that refuses instances whose C++ object was never constructed
// (made with T.__new__(T) and no __init__): TypeError instead of a call on uninitialised memory.
// Every binding file sees these specialisations through this header.
template <typename T>
class __attribute__((visibility("hidden"))) InitializedOnlyCaster : public pybind11::detail::type_caster_base<T> {
 public:
  bool load(pybind11::handle src, bool convert) {
    if (!pybind11::detail::type_caster_base<T>::load(src, convert)) return false;
    // __init__ registers the instance (so do casts of C++ references); __new__ alone does not.
    // The part of the instance that is a T (a Python subclass may have several bound bases);
    // T's type record looked up once, not on every call.
    static pybind11::detail::type_info* const type = pybind11::detail::get_type_info(typeid(T));
    auto* instance = reinterpret_cast<pybind11::detail::instance*>(src.ptr());
    if (!src.is_none() && !instance->get_value_and_holder(type).instance_registered()) {
      throw pybind11::type_error(std::string(Py_TYPE(src.ptr())->tp_name) +
                                 " object is not initialized (made with __new__ without "
                                 "__init__)");
    }
    return true;
  }
};

}  // namespace ferrum_kv::bindings

namespace pybind11::detail {
template <>
class type_caster<ferrum_kv::PagedKvCache>
    : public ferrum_kv::bindings::InitializedOnlyCaster<ferrum_kv::PagedKvCache> {};
template <>
class type_caster<ferrum_kv::KvStorage>
    : public ferrum_kv::bindings::InitializedOnlyCaster<ferrum_kv::KvStorage> {};
template <>
class type_caster<ferrum_kv::CacheConfig>
    : public ferrum_kv::bindings::InitializedOnlyCaster<ferrum_kv::CacheConfig> {};
template <>
class type_caster<ferrum_kv::BlockPool>
    : public ferrum_kv::bindings::InitializedOnlyCaster<ferrum_kv::BlockPool> {};
}  // namespace pybind11::detail

namespace ferrum_kv::bindings {

void BindErrors(pybind11::module_& m);
void BindConfig(pybind11::module_& m);
void BindBlockPool(pybind11::module_& m);
void BindKvStorage(pybind11::module_& m);
void BindCacheManager(pybind11::module_& m);
void BindAttention(pybind11::module_& m);
void BindBlockHash(pybind11::module_& m);
void BindParallel(pybind11::module_& m);
void BindTiers(pybind11::module_& m);

}  // namespace ferrum_kv::bindings
