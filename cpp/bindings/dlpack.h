// The DLPack C ABI (https://dmlc.github.io/dlpack/latest/c_api.html), the subset ferrum-kv uses:
// the structs of version 1.x (DLManagedTensorVersioned) and of the legacy, unversioned exchange
// (DLManagedTensor), written here from the public specification. Only the layouts and the
// constants matter: they must match every other DLPack implementation bit for bit.
//
// The Python protocol around them (data-apis.org, "DLPack: Python specification"): a producer's
// __dlpack__ returns a PyCapsule named "dltensor_versioned" (a DLManagedTensorVersioned*) or
// "dltensor" (a DLManagedTensor*); the consumer renames it "used_dltensor_versioned" /
// "used_dltensor" when it takes ownership and calls the deleter when it is done with the memory.
// An unconsumed capsule calls the deleter when it is destroyed.
#pragma once

#include <cstdint>

namespace ferrum_kv::bindings::dlpack {

// The version this code writes; a consumer must refuse another major version.
inline constexpr uint32_t kMajorVersion = 1;
inline constexpr uint32_t kMinorVersion = 0;

inline constexpr uint64_t kFlagReadOnly = uint64_t{1} << 0;  // consumers must not write
inline constexpr uint64_t kFlagIsCopied = uint64_t{1} << 1;  // the producer made a private copy

inline constexpr const char* kCapsuleName = "dltensor";
inline constexpr const char* kUsedCapsuleName = "used_dltensor";
inline constexpr const char* kVersionedCapsuleName = "dltensor_versioned";
inline constexpr const char* kUsedVersionedCapsuleName = "used_dltensor_versioned";

// DLDeviceType: the values ferrum-kv names in messages (the enum has more).
enum DeviceType : int32_t {
  kCpu = 1,
  kCuda = 2,
  kCudaHost = 3,
  kOpenCl = 4,
  kVulkan = 7,
  kMetal = 8,
  kRocm = 10,
  kRocmHost = 11,
  kCudaManaged = 13,
  kOneApi = 14,
};

// DLDataTypeCode (the codes ferrum-kv reads or writes).
enum TypeCode : uint8_t {
  kInt = 0,
  kUInt = 1,
  kFloat = 2,
  kBfloat = 4,
  kBool = 6,
};

struct Version {  // DLPackVersion
  uint32_t major;
  uint32_t minor;
};

struct Device {  // DLDevice
  int32_t device_type;  // a DeviceType
  int32_t device_id;
};

struct DataType {  // DLDataType
  uint8_t code;    // a TypeCode
  uint8_t bits;    // bits of one lane
  uint16_t lanes;  // 1 for scalars
};

struct Tensor {  // DLTensor
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;    // [ndim]
  int64_t* strides;  // [ndim] in elements, or null for a compact row-major tensor
  uint64_t byte_offset;
};

struct ManagedTensor {  // DLManagedTensor (legacy, unversioned)
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor* self);
};

struct ManagedTensorVersioned {  // DLManagedTensorVersioned
  Version version;
  void* manager_ctx;
  void (*deleter)(ManagedTensorVersioned* self);
  uint64_t flags;  // kFlag* bits
  Tensor dl_tensor;
};

}  // namespace ferrum_kv::bindings::dlpack
