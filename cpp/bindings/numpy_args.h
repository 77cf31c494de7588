// Validation of NumPy arguments at the boundary: every check raises ValueError (wrong ndim,
// shape, dtype or layout) or IndexError (an id outside int32) naming the expected and the actual
// value, before any state changes or the GIL is released.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "ferrum_kv/kv_storage.h"
#include "ferrum_kv/types.h"

namespace ferrum_kv::bindings {

inline bool AnyObject(PyObject*) { return true; }

// A parameter documented as numpy.ndarray that accepts any object, so that the function can
// raise a short TypeError naming the parameter (pybind11's own mismatch error lists the repr of
// every argument, whole arrays included).
class __attribute__((visibility("hidden"))) ArrayArgument : public pybind11::object {
 public:
  PYBIND11_OBJECT_DEFAULT(ArrayArgument, pybind11::object, AnyObject)
  // The argument as an array; TypeError "<name> must be a numpy.ndarray, got <type>" otherwise.
  pybind11::array Get(const char* name) const;
};

// Any 1-D integer array-like (list, tuple, ndarray of any integer dtype) as a vector of T
// (int32_t or int64_t): always a private copy, so that what the caller validates is what it uses
// after releasing the GIL (another Python thread could change the caller's array). Raises
// ValueError for non-integer dtypes or ndim != 1, IndexError for values outside T's range.
template <typename T>
std::vector<T> AsIntVector(pybind11::handle obj, const char* name);
inline std::vector<int32_t> AsInt32Vector(pybind11::handle obj, const char* name) {
  return AsIntVector<int32_t>(obj, name);
}
inline std::vector<int64_t> AsInt64Vector(pybind11::handle obj, const char* name) {
  return AsIntVector<int64_t>(obj, name);
}

// Moves a vector into a new NumPy array (no copy: the array's base owns the vector).
template <typename T>
pybind11::array MoveToArray(std::vector<T>&& data, pybind11::dtype dtype,
                            std::vector<pybind11::ssize_t> shape) {
  auto* owned = new std::vector<T>(std::move(data));
  pybind11::capsule base(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return pybind11::array(dtype, std::move(shape), {}, owned->data(), base);
}
template <typename T>
pybind11::array MoveToArray(std::vector<T>&& data, std::vector<pybind11::ssize_t> shape) {
  return MoveToArray(std::move(data), pybind11::dtype::of<T>(), std::move(shape));
}

// The NumPy dtype of views of a storage dtype (bfloat16 is exposed as its uint16 bits).
pybind11::dtype NumpyDTypeOf(DType dtype);

// Checks that array is C-contiguous with exactly this shape and returns its element type:
// float32, or the storage dtype given (float16 / bfloat16 as uint16); for a quantized storage
// dtype float32 or float16. Raises ValueError otherwise.
DType CheckFloatArray(const pybind11::array& array, const char* name,
                      const std::vector<pybind11::ssize_t>& shape, DType storage_dtype);

// Whether the array's bytes share any byte with the storage's arena (a view of it).
bool OverlapsArena(const pybind11::array& array, const KvStorage& storage);
// The array's data; or, when it overlaps the storage's arena (a view of it, which a write could
// change while it is read), a copy of it kept in *copy.
const void* DataOutsideArena(const pybind11::array& array, const KvStorage& storage,
                             std::vector<uint8_t>* copy);

std::string ShapeString(const pybind11::array& array);
std::string ShapeString(const std::vector<pybind11::ssize_t>& shape);

}  // namespace ferrum_kv::bindings

namespace pybind11::detail {
template <>
struct handle_type_name<ferrum_kv::bindings::ArrayArgument> {
  static constexpr auto name = const_name("numpy.ndarray");
};
}  // namespace pybind11::detail
