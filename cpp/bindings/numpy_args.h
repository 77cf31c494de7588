// Validation of NumPy arguments at the boundary: every check raises ValueError (wrong ndim,
// shape, dtype or layout) or IndexError (an id outside int32) naming the expected and the actual
// value, before any state changes or the GIL is released.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "ferrum_kv/types.h"

namespace ferrum_kv::bindings {

using Int32Array = pybind11::array_t<int32_t, pybind11::array::c_style>;

// Any 1-D integer array-like (list, tuple, ndarray of any integer dtype) as a C-contiguous int32
// array; no copy when it already is one. Raises ValueError for non-integer dtypes or ndim != 1,
// IndexError for values outside int32.
Int32Array AsInt32Vector(pybind11::handle obj, const char* name);

// The NumPy dtype of views of a storage dtype (bfloat16 is exposed as its uint16 bits).
pybind11::dtype NumpyDTypeOf(DType dtype);

// Checks that array is C-contiguous with exactly this shape and returns its element type:
// float32, or the storage dtype given (float16 / bfloat16 as uint16). Raises ValueError otherwise.
DType CheckFloatArray(const pybind11::array& array, const char* name,
                      const std::vector<pybind11::ssize_t>& shape, DType storage_dtype);

std::string ShapeString(const pybind11::array& array);
std::string ShapeString(const std::vector<pybind11::ssize_t>& shape);

}  // namespace ferrum_kv::bindings
