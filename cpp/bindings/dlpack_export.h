// bfloat16 data in NumPy, exportable as bfloat16: ferrum_kv._core.BFloat16Array.
//
// NumPy has no bfloat16 dtype, so bfloat16 storage is viewed as its uint16 bits. A plain uint16
// array would reach torch.from_dlpack as torch.uint16; BFloat16Array is a thin numpy.ndarray
// subclass (no state of its own, so every view, copy and existing user of the array keeps
// working) whose __dlpack__ exports uint16 data as DLPack kDLBfloat 16 (torch.bfloat16), zero-copy.
// Arrays of other dtypes (float32, float16, uint8 codes, ...) stay plain ndarrays: NumPy's own
// __dlpack__ already exports them with the right DLPack type.
//
// __dlpack__(stream=None, max_version=None, dl_device=None, copy=None), per the Python DLPack
// specification: a versioned capsule ("dltensor_versioned", DLPack 1.0) when the consumer passes
// max_version >= (1, 0), with the read-only flag when the array is not writeable; the legacy
// "dltensor" capsule otherwise (BufferError for a read-only array, which it cannot mark). copy=True
// exports a private copy (flag IS_COPIED). BufferError for a stream (CPU has none) or a dl_device
// other than the CPU. The capsule holds a strong reference to the array, whose base owns the
// memory (for views of a KvStorage, a shared ownership of the arena): the memory lives until the
// consumer calls the deleter, whatever happens to the cache or the storage meanwhile. The deleter
// takes the GIL to release that reference, so any thread may call it. A BFloat16Array whose
// dtype is no longer uint16 (a .view() or .astype() of it) exports as NumPy does.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "ferrum_kv/types.h"

namespace ferrum_kv::bindings {

// Creates the class ferrum_kv._core.BFloat16Array in m (once, at module initialisation).
void BindBFloat16Array(pybind11::module_& m);

// bits (bfloat16 bits in any 16-bit integer dtype) as a BFloat16Array (uint16) over the same
// memory.
pybind11::array AsBFloat16Array(const pybind11::array& bits);

// Whether array is a BFloat16Array of uint16 elements (bfloat16 values).
bool IsBFloat16Array(const pybind11::array& array);

// The NumPy face of an array of elements of a storage dtype, made by ferrum-kv (a view of an
// arena, a copy of K/V): a BFloat16Array for bfloat16, the array itself for every other dtype.
pybind11::array StorageArray(const pybind11::array& array, DType dtype);

}  // namespace ferrum_kv::bindings
