#include "dlpack_import.h"

#include <string>
#include <vector>

#include "dlpack.h"
#include "dlpack_export.h"
#include "ferrum_kv/support/check.h"

namespace py = pybind11;

namespace ferrum_kv::bindings {

namespace {

std::string DeviceName(int64_t type) {
  switch (type) {
    case dlpack::kCpu: return "CPU";
    case dlpack::kCuda: return "CUDA";
    case dlpack::kCudaHost: return "CUDA host";
    case dlpack::kOpenCl: return "OpenCL";
    case dlpack::kVulkan: return "Vulkan";
    case dlpack::kMetal: return "Metal";
    case dlpack::kRocm: return "ROCm";
    case dlpack::kRocmHost: return "ROCm host";
    case dlpack::kCudaManaged: return "CUDA managed";
    case dlpack::kOneApi: return "oneAPI";
  }
  return "DLPack device type " + std::to_string(type);
}

[[noreturn]] void ThrowNotOnCpu(const char* name, const std::string& device) {
  FKV_THROW(InvalidArgument,
            name << " must be a CPU tensor, got one on " << device << " (copy it to the CPU first)");
}

void CheckCpu(int64_t device_type, int64_t device_id, const char* name) {
  if (device_type != dlpack::kCpu) {
    ThrowNotOnCpu(name, DeviceName(device_type) + ":" + std::to_string(device_id));
  }
}

// What the torch fast path needs from torch, looked up once torch is imported (never importing
// it); the references are kept for the process.
struct Torch {
  PyObject* tensor_type = nullptr;  // torch.Tensor
  PyObject* bfloat16 = nullptr;     // torch.bfloat16
  PyObject* int16 = nullptr;        // torch.int16
};

// The Torch objects, or null before torch is imported (or while it is being imported).
const Torch* TorchObjects() {
  static Torch torch;  // written once, under the GIL
  if (torch.tensor_type == nullptr) {
    PyObject* module = PyDict_GetItemString(PyImport_GetModuleDict(), "torch");  // borrowed
    if (module == nullptr) return nullptr;
    Torch found;
    found.tensor_type = PyObject_GetAttrString(module, "Tensor");
    found.bfloat16 = PyObject_GetAttrString(module, "bfloat16");
    found.int16 = PyObject_GetAttrString(module, "int16");
    if (found.tensor_type == nullptr || found.bfloat16 == nullptr || found.int16 == nullptr ||
        !PyType_Check(found.tensor_type)) {
      PyErr_Clear();
      Py_XDECREF(found.tensor_type);
      Py_XDECREF(found.bfloat16);
      Py_XDECREF(found.int16);
      return nullptr;
    }
    torch = found;
  }
  return &torch;
}

// A consumed capsule: its tensor, its flags, and the owner whose destruction calls its deleter.
struct Taken {
  dlpack::Tensor* tensor;
  uint64_t flags;
  py::capsule owner;
};

template <typename Managed>
py::capsule OwnerOf(Managed* managed) {
  return py::capsule(managed, [](void* p) {
    auto* m = static_cast<Managed*>(p);
    if (m->deleter != nullptr) m->deleter(m);
  });
}

Taken Take(const py::object& capsule, const char* name) {
  PyObject* c = capsule.ptr();
  if (PyCapsule_IsValid(c, dlpack::kVersionedCapsuleName)) {
    auto* managed = static_cast<dlpack::ManagedTensorVersioned*>(
        PyCapsule_GetPointer(c, dlpack::kVersionedCapsuleName));
    PyCapsule_SetName(c, dlpack::kUsedVersionedCapsuleName);
    py::capsule owner = OwnerOf(managed);  // from here on, the deleter runs whatever happens
    FKV_CHECK_ARG(managed->version.major == dlpack::kMajorVersion,
                  name << " is a DLPack " << managed->version.major << "."
                       << managed->version.minor << " tensor; ferrum-kv reads DLPack 1.x");
    return {&managed->dl_tensor, managed->flags, std::move(owner)};
  }
  if (PyCapsule_IsValid(c, dlpack::kCapsuleName)) {
    auto* managed =
        static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(c, dlpack::kCapsuleName));
    PyCapsule_SetName(c, dlpack::kUsedCapsuleName);
    return {&managed->dl_tensor, 0, OwnerOf(managed)};
  }
  throw py::type_error(std::string(name) + ".__dlpack__() returned " +
                       std::string(py::str(py::type::of(capsule).attr("__name__"))) +
                       ", not an unused DLPack capsule");
}

// The NumPy dtype of a DLPack element type; *bfloat16 set for bfloat16 (held as uint16 bits).
py::dtype NumpyDTypeOfElements(const dlpack::DataType& type, const char* name, bool* bfloat16) {
  *bfloat16 = type.code == dlpack::kBfloat && type.bits == 16;
  const bool whole_bytes = type.bits % 8 == 0 && type.bits <= 64 && type.bits > 0;
  char kind = 0;
  if (type.code == dlpack::kInt) kind = 'i';
  if (type.code == dlpack::kUInt || *bfloat16) kind = 'u';
  if (type.code == dlpack::kFloat && type.bits >= 16) kind = 'f';
  if (type.code == dlpack::kBool && type.bits == 8) kind = 'b';
  FKV_CHECK_ARG(kind != 0 && whole_bytes && type.lanes == 1,
                name << " has DLPack dtype (code " << int(type.code) << ", bits "
                     << int(type.bits) << ", lanes " << type.lanes
                     << "), which has no NumPy equivalent");
  return py::dtype(std::string(1, kind) + std::to_string(type.bits / 8));
}

}  // namespace

bool IsTorchTensor(py::handle obj) {
  const Torch* torch = TorchObjects();
  return torch != nullptr &&
         PyObject_TypeCheck(obj.ptr(), reinterpret_cast<PyTypeObject*>(torch->tensor_type));
}

py::array ArrayFromTorch(py::handle tensor, const char* name) {
  const Torch& torch = *TorchObjects();  // set: tensor is a torch.Tensor
  if (!tensor.attr("is_cpu").cast<bool>()) {
    ThrowNotOnCpu(name, std::string(py::str(tensor.attr("device"))));
  }
  if (tensor.attr("dtype").ptr() == torch.bfloat16) {
    return AsBFloat16Array(tensor.attr("view")(py::handle(torch.int16)).attr("numpy")());
  }
  return tensor.attr("numpy")();
}

bool IsDLPackProducer(py::handle obj) {
  return !py::isinstance<py::array>(obj) && PyObject_HasAttrString(obj.ptr(), "__dlpack__") &&
         PyObject_HasAttrString(obj.ptr(), "__dlpack_device__");
}

py::array ArrayFromDLPack(py::handle producer, const char* name) {
  const py::object device = producer.attr("__dlpack_device__")();
  CheckCpu(py::int_(device[py::int_(0)]).cast<int64_t>(),
           py::int_(device[py::int_(1)]).cast<int64_t>(), name);
  py::object capsule;
  try {
    capsule = producer.attr("__dlpack__")(py::arg("max_version") = py::make_tuple(1, 0));
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_TypeError)) throw;
    capsule = producer.attr("__dlpack__")();  // a producer older than DLPack 1.0
  }
  const Taken taken = Take(capsule, name);
  const dlpack::Tensor& tensor = *taken.tensor;
  CheckCpu(tensor.device.device_type, tensor.device.device_id, name);
  bool bfloat16 = false;
  const py::dtype dtype = NumpyDTypeOfElements(tensor.dtype, name, &bfloat16);
  const int64_t itemsize = tensor.dtype.bits / 8;
  FKV_CHECK_ARG(tensor.ndim >= 0, name << " has a negative ndim " << tensor.ndim);
  std::vector<py::ssize_t> shape(tensor.shape, tensor.shape + tensor.ndim);
  std::vector<py::ssize_t> strides(tensor.ndim);
  int64_t compact = itemsize;  // the byte stride of a row-major tensor, from the last axis
  for (int32_t i = tensor.ndim - 1; i >= 0; --i) {
    const int64_t elements = tensor.strides != nullptr ? tensor.strides[i] : compact / itemsize;
    int64_t bytes;
    FKV_CHECK_ARG(!__builtin_mul_overflow(elements, itemsize, &bytes) &&
                      (shape[i] == 0 || !__builtin_mul_overflow(compact, shape[i], &compact)),
                  name << " has strides or a shape that overflow 64 bits");
    strides[i] = bytes;
  }
  void* data = static_cast<char*>(tensor.data) + tensor.byte_offset;
  py::array array(dtype, std::move(shape), std::move(strides), data, taken.owner);
  if ((taken.flags & dlpack::kFlagReadOnly) != 0) array.attr("setflags")(py::arg("write") = false);
  return bfloat16 ? AsBFloat16Array(array) : array;
}

}  // namespace ferrum_kv::bindings
