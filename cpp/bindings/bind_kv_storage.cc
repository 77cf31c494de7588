#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>

#include "bindings.h"
#include "dlpack_export.h"
#include "ferrum_kv/kv_storage.h"
#include "ferrum_kv/support/check.h"
#include "numpy_args.h"

namespace py = pybind11;

namespace ferrum_kv::bindings {

namespace {

// A NumPy view into the arena whose base object owns a reference to the arena, so the view stays
// valid after the KvStorage is gone; exportable zero-copy through DLPack (bfloat16 as bfloat16:
// StorageArray).
py::array ArenaView(const KvStorage& storage, std::vector<py::ssize_t> shape,
                    std::vector<py::ssize_t> element_strides, int64_t element_offset) {
  const int64_t element_size = DTypeSize(storage.dtype());
  std::vector<py::ssize_t> byte_strides;
  for (py::ssize_t stride : element_strides) byte_strides.push_back(stride * element_size);
  auto* owner = new std::shared_ptr<uint8_t>(storage.Arena());
  py::capsule base(owner, [](void* p) { delete static_cast<std::shared_ptr<uint8_t>*>(p); });
  return StorageArray(py::array(NumpyDTypeOf(storage.dtype()), std::move(shape),
                                std::move(byte_strides),
                                storage.Data() + element_offset * element_size, base),
                      storage.dtype());
}

py::array LayerView(const KvStorage& s, int64_t layer, int kv) {
  const int32_t num_layers = s.config().num_layers;
  FKV_CHECK_INDEX(layer >= 0 && layer < num_layers,
                  "layer " << layer << " out of range [0, " << num_layers << ")");
  const CacheConfig& c = s.config();
  return ArenaView(s, {s.num_blocks(), c.num_kv_heads, c.block_size, c.head_dim},
                   {s.BlockStride(), s.HeadStride(), s.TokenStride(), 1},
                   layer * s.LayerStride() + kv * s.KvStride());
}

}  // namespace

void BindKvStorage(py::module_& m) {
  py::class_<KvStorage, std::shared_ptr<KvStorage>>(
      m, "KvStorage",
      "K/V bytes of a pool of blocks in one 64-byte-aligned arena, block-major: "
      "[num_blocks, num_layers, 2 (K, V), num_kv_heads, block_size, head_dim]. Views are "
      "zero-copy and keep the arena alive; bfloat16 storage is viewed as uint16 bits (a "
      "BFloat16Array: torch.from_dlpack gives torch.bfloat16).")
      .def(py::init<const CacheConfig&>(), py::arg("config"),
           "Allocate an arena of config.num_blocks blocks (zeroed). Raises MemoryError without "
           "the memory.")
      .def_property_readonly("config", &KvStorage::config, "The CacheConfig of its geometry.")
      .def_property_readonly(
          "dtype", [](const KvStorage& s) { return DTypeName(s.dtype()); },
          "'float32' | 'float16' | 'bfloat16' (views of bfloat16 are uint16 bits in a "
          "BFloat16Array).")
      .def_property_readonly("num_blocks", &KvStorage::num_blocks, "Blocks in the arena.")
      .def_property_readonly("bytes_per_block", &KvStorage::bytes_per_block,
                             "Bytes of one block: K and V, all layers.")
      .def_property_readonly("nbytes", &KvStorage::total_bytes, "Bytes of the whole arena.")
      .def(
          "array",
          [](const KvStorage& s) {
            const CacheConfig& c = s.config();
            return ArenaView(s,
                             {s.num_blocks(), c.num_layers, 2, c.num_kv_heads, c.block_size,
                              c.head_dim},
                             {s.BlockStride(), s.LayerStride(), s.KvStride(), s.HeadStride(),
                              s.TokenStride(), 1},
                             0);
          },
          "Zero-copy view [num_blocks, num_layers, 2, num_kv_heads, block_size, head_dim].")
      .def(
          "key_cache", [](const KvStorage& s, int64_t layer) { return LayerView(s, layer, 0); },
          py::arg("layer").noconvert(),
          "Zero-copy strided view of layer's keys: [num_blocks, num_kv_heads, block_size, "
          "head_dim].")
      .def(
          "value_cache", [](const KvStorage& s, int64_t layer) { return LayerView(s, layer, 1); },
          py::arg("layer").noconvert(), "Like key_cache, for values.")
      .def(
          "write_slot",
          [](KvStorage& s, int32_t block, int32_t layer, int32_t offset, const ArrayArgument& k_arg,
             const ArrayArgument& v_arg) {
            const py::array k = k_arg.Get("k");
            const py::array v = v_arg.Get("v");
            const std::vector<py::ssize_t> shape = {s.config().num_kv_heads, s.config().head_dim};
            const DType k_dtype = CheckFloatArray(k, "k", shape, s.dtype());
            const DType v_dtype = CheckFloatArray(v, "v", shape, s.dtype());
            FKV_CHECK_ARG(k_dtype == v_dtype, "k and v must have the same dtype");
            std::vector<uint8_t> k_copy, v_copy;  // views of the arena are read before the write
            const void* k_data = DataOutsideArena(k, s, &k_copy);
            const void* v_data = DataOutsideArena(v, s, &v_copy);
            py::gil_scoped_release release;
            s.WriteSlot(block, layer, offset, k_data, v_data, k_dtype);
          },
          py::arg("block_id").noconvert(), py::arg("layer").noconvert(), py::arg("offset").noconvert(), py::arg("k"), py::arg("v"),
          "Write one token's K and V ([num_kv_heads, head_dim] each, float32 or the storage "
          "dtype; float32 is rounded to nearest even) under the block's lock. k and v may be "
          "views of this storage: they are copied before the write.")
      .def(
          "read_slot",
          [](const KvStorage& s, int32_t block, int32_t layer, int32_t offset) {
            const std::vector<py::ssize_t> shape = {s.config().num_kv_heads, s.config().head_dim};
            py::array k(NumpyDTypeOf(s.dtype()), shape);
            py::array v(NumpyDTypeOf(s.dtype()), shape);
            void* k_data = k.mutable_data();
            void* v_data = v.mutable_data();
            {
              py::gil_scoped_release release;
              s.ReadSlot(block, layer, offset, k_data, v_data);
            }
            return py::make_tuple(StorageArray(k, s.dtype()), StorageArray(v, s.dtype()));
          },
          py::arg("block_id").noconvert(), py::arg("layer").noconvert(), py::arg("offset").noconvert(),
          "Copies of one token's (K, V), each [num_kv_heads, head_dim] in the storage dtype.")
      .def("__repr__", [](const KvStorage& s) {
        return "KvStorage(num_blocks=" + std::to_string(s.num_blocks()) + ", dtype='" +
               DTypeName(s.dtype()) + "', nbytes=" + std::to_string(s.total_bytes()) + ")";
      });
}

}  // namespace ferrum_kv::bindings
