// The Python bindings: one Bind<Component>() per file, called in order by module.cc.
// This folder is the only place that includes pybind11.
#pragma once

#include <pybind11/pybind11.h>

namespace ferrum_kv::bindings {

void BindErrors(pybind11::module_& m);
void BindConfig(pybind11::module_& m);
void BindBlockPool(pybind11::module_& m);
void BindKvStorage(pybind11::module_& m);
void BindCacheManager(pybind11::module_& m);
void BindAttention(pybind11::module_& m);
void BindBlockHash(pybind11::module_& m);

}  // namespace ferrum_kv::bindings
