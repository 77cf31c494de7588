#include "numpy_args.h"

#include <limits>
#include <sstream>

#include "ferrum_kv/support/check.h"

namespace py = pybind11;

namespace ferrum_kv::bindings {

std::string ShapeString(const std::vector<py::ssize_t>& shape) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << (shape.size() == 1 ? ",)" : ")");
  return out.str();
}

std::string ShapeString(const py::array& array) {
  return ShapeString(std::vector<py::ssize_t>(array.shape(), array.shape() + array.ndim()));
}

template <typename T>
std::vector<T> AsIntVector(py::handle obj, const char* name) {
  using Array = py::array_t<T, py::array::c_style>;
  // Fast path (the common case on a scheduler's hot path): already a C-contiguous vector of T.
  if (Array::check_(obj) && py::reinterpret_borrow<py::array>(obj).ndim() == 1) {
    const auto source = py::reinterpret_borrow<Array>(obj);
    return std::vector<T>(source.data(), source.data() + source.size());
  }
  py::array array = py::array::ensure(obj);
  if (!array) FKV_THROW(InvalidArgument, name << " must be a 1-D integer array");
  const char kind = array.dtype().kind();
  // An empty list arrives as float64: an empty batch is fine whatever its dtype.
  if (array.ndim() == 1 && array.size() == 0) return {};
  FKV_CHECK_ARG(kind == 'i' || kind == 'u', name << " must have an integer dtype, got "
                                                 << std::string(py::str(array.dtype())));
  FKV_CHECK_ARG(array.ndim() == 1, name << " must be 1-D, got shape " << ShapeString(array));
  const auto wide = array.attr("astype")("int64").cast<py::array_t<int64_t>>();
  const bool is_unsigned = kind == 'u';
  const auto values = wide.unchecked<1>();
  std::vector<T> result(static_cast<size_t>(values.shape(0)));
  T* out = result.data();
  for (py::ssize_t i = 0; i < values.shape(0); ++i) {
    const int64_t value = values(i);
    // A uint64 above INT64_MAX wraps to a negative int64 in astype: out of range either way.
    const bool fits = value >= std::numeric_limits<T>::min() &&
                      value <= std::numeric_limits<T>::max() && !(is_unsigned && value < 0);
    FKV_CHECK_INDEX(fits, name << "[" << i << "] = " << std::string(py::str(array[py::int_(i)]))
                               << " is outside the range of "
                               << (sizeof(T) == 4 ? "int32" : "int64"));
    out[i] = static_cast<T>(value);
  }
  return result;
}

template std::vector<int32_t> AsIntVector<int32_t>(py::handle, const char*);
template std::vector<int64_t> AsIntVector<int64_t>(py::handle, const char*);

bool OverlapsArena(const py::array& array, const KvStorage& storage) {
  const auto begin = reinterpret_cast<uintptr_t>(array.data());
  const auto bytes = static_cast<uintptr_t>(array.nbytes());
  const auto arena = reinterpret_cast<uintptr_t>(storage.Data());
  return bytes > 0 && begin < arena + uintptr_t(storage.total_bytes()) && arena < begin + bytes;
}

const void* DataOutsideArena(const py::array& array, const KvStorage& storage,
                             std::vector<uint8_t>* copy) {
  if (!OverlapsArena(array, storage)) return array.data();
  const auto* begin = static_cast<const uint8_t*>(array.data());
  copy->assign(begin, begin + array.nbytes());
  return copy->data();
}

py::array ArrayArgument::Get(const char* name) const {
  if (!py::isinstance<py::array>(*this)) {
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                         std::string(py::str(py::type::of(*this).attr("__name__"))));
  }
  return py::reinterpret_borrow<py::array>(*this);
}

py::dtype NumpyDTypeOf(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return py::dtype::of<float>();
    case DType::kFloat16: return py::dtype("float16");
    case DType::kBFloat16: return py::dtype::of<uint16_t>();
    default: return py::dtype::of<uint8_t>();  // quantized: codes (int4 packed two per byte)
  }
}

DType CheckFloatArray(const py::array& array, const char* name,
                      const std::vector<py::ssize_t>& shape, DType storage_dtype) {
  DType dtype;
  if (array.dtype().is(py::dtype::of<float>())) {
    dtype = DType::kFloat32;
  } else if (IsQuantized(storage_dtype)) {
    FKV_CHECK_ARG(array.dtype().is(py::dtype("float16")),
                  name << " must have dtype float32 or float16 (quantized to "
                       << DTypeName(storage_dtype) << "), got "
                       << std::string(py::str(array.dtype())));
    dtype = DType::kFloat16;
  } else if (array.dtype().is(NumpyDTypeOf(storage_dtype))) {
    dtype = storage_dtype;
  } else {
    if (storage_dtype == DType::kFloat32) {
      FKV_THROW(InvalidArgument, name << " must have dtype float32, got "
                                      << std::string(py::str(array.dtype())));
    }
    FKV_THROW(InvalidArgument, name << " must have dtype float32 or "
                                    << std::string(py::str(NumpyDTypeOf(storage_dtype)))
                                    << " (the storage dtype " << DTypeName(storage_dtype)
                                    << "), got " << std::string(py::str(array.dtype())));
  }
  const bool same_shape =
      array.ndim() == py::ssize_t(shape.size()) &&
      std::equal(shape.begin(), shape.end(), array.shape());
  FKV_CHECK_ARG(same_shape, name << " must have shape " << ShapeString(shape) << ", got "
                                 << ShapeString(array));
  FKV_CHECK_ARG(array.flags() & py::array::c_style, name << " must be C-contiguous");
  return dtype;
}

}  // namespace ferrum_kv::bindings
