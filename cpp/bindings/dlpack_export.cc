#include "dlpack_export.h"

#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "dlpack.h"

namespace py = pybind11;

namespace ferrum_kv::bindings {

namespace {

// The class object, created once by BindBFloat16Array and never released (it lives as long as
// the module).
PyObject* bfloat16_array_type = nullptr;

// What a capsule's DLManagedTensor(Versioned) owns: a reference to the exported array (which
// keeps its memory alive) and the shape and strides the DLTensor points to.
struct ExportContext {
  PyObject* array = nullptr;  // strong reference
  std::vector<int64_t> shape, strides;
  dlpack::ManagedTensorVersioned versioned{};
  dlpack::ManagedTensor legacy{};
};

// The deleter of both layouts: releases the array (taking the GIL, as the consumer may call it
// from any thread) and the context. After the interpreter is gone there is nothing to release.
template <typename Managed>
void DeleteExport(Managed* self) {
  auto* context = static_cast<ExportContext*>(self->manager_ctx);
  if (Py_IsInitialized()) {
    const PyGILState_STATE state = PyGILState_Ensure();
    Py_XDECREF(context->array);
    PyGILState_Release(state);
  }
  delete context;
}

// The destructor of a capsule: calls the deleter unless a consumer took the tensor (renamed the
// capsule "used_...", and calls the deleter itself when done).
template <typename Managed>
void DestroyCapsule(PyObject* capsule) {
  constexpr bool kVersioned = std::is_same_v<Managed, dlpack::ManagedTensorVersioned>;
  const char* name = kVersioned ? dlpack::kVersionedCapsuleName : dlpack::kCapsuleName;
  if (!PyCapsule_IsValid(capsule, name)) return;  // consumed
  auto* managed = static_cast<Managed*>(PyCapsule_GetPointer(capsule, name));
  managed->deleter(managed);
}

bool IsBFloat16Bits(const py::array& array) {
  return array.dtype().kind() == 'u' && array.itemsize() == 2 &&
         array.dtype().byteorder() != '>';
}

// BFloat16Array.__dlpack__: see dlpack_export.h.
py::object ExportBFloat16(const py::array& self, const py::object& stream,
                          const py::object& max_version, const py::object& dl_device,
                          const py::object& copy) {
  if (!IsBFloat16Bits(self)) {  // NumPy's export; the keywords given only (NumPy < 2.1 has few)
    py::dict keywords;
    if (!stream.is_none()) keywords["stream"] = stream;
    if (!max_version.is_none()) keywords["max_version"] = max_version;
    if (!dl_device.is_none()) keywords["dl_device"] = dl_device;
    if (!copy.is_none()) keywords["copy"] = copy;
    return py::module_::import("numpy").attr("ndarray").attr("__dlpack__")(self, **keywords);
  }
  if (!stream.is_none()) throw py::buffer_error("stream must be None for a CPU array");
  if (!dl_device.is_none() &&
      (py::len(dl_device) != 2 || py::int_(dl_device[py::int_(0)]).cast<int64_t>() !=
                                      dlpack::kCpu)) {
    throw py::buffer_error("BFloat16Array is on the CPU: dl_device must be None or (1, 0), got " +
                           std::string(py::repr(dl_device)));
  }
  const bool versioned =
      !max_version.is_none() && py::int_(max_version[py::int_(0)]).cast<int64_t>() >= 1;
  const bool copied = !copy.is_none() && copy.cast<bool>();
  const py::array source = copied ? py::array(self.attr("copy")()) : self;
  const bool read_only = !source.writeable();
  if (read_only && !versioned) {
    throw py::buffer_error(
        "a read-only BFloat16Array needs a versioned DLPack capsule (max_version >= (1, 0)): the "
        "legacy one cannot mark it read-only");
  }

  auto context = std::make_unique<ExportContext>();
  const py::ssize_t ndim = source.ndim();
  for (py::ssize_t i = 0; i < ndim; ++i) {
    if (source.strides(i) % 2 != 0) {
      throw py::buffer_error("BFloat16Array strides must be multiples of 2 bytes to export");
    }
    context->shape.push_back(source.shape(i));
    context->strides.push_back(source.strides(i) / 2);
  }
  dlpack::Tensor tensor{};
  tensor.data = const_cast<void*>(source.data());
  tensor.device = {dlpack::kCpu, 0};
  tensor.ndim = static_cast<int32_t>(ndim);
  tensor.dtype = {dlpack::kBfloat, 16, 1};
  tensor.shape = context->shape.data();
  tensor.strides = context->strides.data();
  tensor.byte_offset = 0;

  ExportContext* raw = context.get();
  if (versioned) {
    raw->versioned = {{dlpack::kMajorVersion, dlpack::kMinorVersion},
                      raw,
                      DeleteExport<dlpack::ManagedTensorVersioned>,
                      (read_only ? dlpack::kFlagReadOnly : 0) | (copied ? dlpack::kFlagIsCopied : 0),
                      tensor};
  } else {
    raw->legacy = {tensor, raw, DeleteExport<dlpack::ManagedTensor>};
  }
  PyObject* capsule =
      versioned ? PyCapsule_New(&raw->versioned, dlpack::kVersionedCapsuleName,
                                DestroyCapsule<dlpack::ManagedTensorVersioned>)
                : PyCapsule_New(&raw->legacy, dlpack::kCapsuleName,
                                DestroyCapsule<dlpack::ManagedTensor>);
  if (capsule == nullptr) throw py::error_already_set();
  raw->array = source.inc_ref().ptr();  // released by the deleter, which owns the context now
  context.release();
  return py::reinterpret_steal<py::object>(capsule);
}

}  // namespace

void BindBFloat16Array(py::module_& m) {
  py::dict namespace_;
  namespace_["__module__"] = m.attr("__name__");
  namespace_["__slots__"] = py::tuple();
  namespace_["__doc__"] =
      "A numpy.ndarray of uint16 bfloat16 bits (how ferrum-kv shows bfloat16 storage and copies "
      "of it to NumPy) whose __dlpack__ exports it as DLPack bfloat16: torch.from_dlpack(a) is a "
      "torch.bfloat16 tensor over the same memory. Otherwise an ordinary ndarray.";
  py::object type = py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(&PyType_Type))(
      "BFloat16Array", py::make_tuple(py::module_::import("numpy").attr("ndarray")), namespace_);
  type.attr("__dlpack__") = py::cpp_function(
      ExportBFloat16, py::name("__dlpack__"), py::is_method(type), py::kw_only(),
      py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
      py::arg("dl_device") = py::none(), py::arg("copy") = py::none(),
      "Export as a DLPack capsule of bfloat16 elements (zero-copy unless copy=True): a "
      "versioned one (read-only flag where the array is not writeable) when max_version >= "
      "(1, 0), the legacy one otherwise.");
  type.attr("__dlpack_device__") = py::cpp_function(
      [](const py::array&) { return py::make_tuple(int(dlpack::kCpu), 0); },
      py::name("__dlpack_device__"), py::is_method(type), "(1, 0): DLPack's CPU device.");
  m.attr("BFloat16Array") = type;
  bfloat16_array_type = type.release().ptr();
}

py::array AsBFloat16Array(const py::array& bits) {
  return bits.attr("view")(py::dtype::of<uint16_t>(), py::handle(bfloat16_array_type));
}

bool IsBFloat16Array(const py::array& array) {
  return PyObject_TypeCheck(array.ptr(), reinterpret_cast<PyTypeObject*>(bfloat16_array_type)) &&
         IsBFloat16Bits(array);
}

py::array StorageArray(const py::array& array, DType dtype) {
  return dtype == DType::kBFloat16 ? AsBFloat16Array(array) : array;
}

}  // namespace ferrum_kv::bindings
