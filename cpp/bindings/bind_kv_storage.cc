#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>

#include "bindings.h"
#include "ferrum_kv/kv_format.h"
#include "ferrum_kv/kv_storage.h"
#include "ferrum_kv/quantize.h"
#include "ferrum_kv/support/check.h"
#include "numpy_args.h"

namespace py = pybind11;

namespace ferrum_kv::bindings {

namespace {

// A NumPy view into the arena (byte strides and offset) whose base object owns a reference to
// the arena, so the view stays valid after the KvStorage is gone.
py::array ArenaView(const KvStorage& storage, const py::dtype& dtype,
                    std::vector<py::ssize_t> shape, std::vector<py::ssize_t> byte_strides,
                    int64_t byte_offset) {
  auto* owner = new std::shared_ptr<uint8_t>(storage.Arena());
  py::capsule base(owner, [](void* p) { delete static_cast<std::shared_ptr<uint8_t>*>(p); });
  return py::array(dtype, std::move(shape), std::move(byte_strides),
                   storage.Data() + byte_offset, base);
}

void CheckViewLayer(const KvStorage& s, int64_t layer) {
  const int32_t num_layers = s.config().num_layers;
  FKV_CHECK_INDEX(layer >= 0 && layer < num_layers,
                  "layer " << layer << " out of range [0, " << num_layers << ")");
}

// [num_blocks, num_kv_heads, block_size, row] of one layer's K (kv 0) or V (kv 1): the elements
// (float dtypes) or the codes (quantized: uint8, row = row_code_bytes).
py::array LayerView(const KvStorage& s, int64_t layer, int kv) {
  CheckViewLayer(s, layer);
  const CacheConfig& c = s.config();
  const HeadRegionLayout& region = s.head_region();
  const int64_t element_size = DTypeSize(s.dtype());
  return ArenaView(s, NumpyDTypeOf(s.dtype()),
                   {s.num_blocks(), c.num_kv_heads, c.block_size,
                    region.row_code_bytes / element_size},
                   {s.bytes_per_block(), s.HeadBytes(), region.row_code_bytes, element_size},
                   s.HeadRegionOffset(int32_t(layer), kv, 0));
}

// [num_blocks, num_kv_heads, block_size, params_per_row] float32 parameters of one layer's K or V
// (quantized dtypes only).
py::array ParamsView(const KvStorage& s, int64_t layer, int kv) {
  CheckViewLayer(s, layer);
  FKV_CHECK_ARG(IsQuantized(s.dtype()), "'" << DTypeName(s.dtype())
                                            << "' storage has no scales (not quantized)");
  const CacheConfig& c = s.config();
  const HeadRegionLayout& region = s.head_region();
  return ArenaView(s, py::dtype::of<float>(),
                   {s.num_blocks(), c.num_kv_heads, c.block_size, region.params_per_row},
                   {s.bytes_per_block(), s.HeadBytes(), region.row_params_bytes(),
                    int64_t{sizeof(float)}},
                   s.HeadRegionOffset(int32_t(layer), kv, 0) + s.ParamsOffset(0));
}

// Float dtypes: [num_blocks, num_layers, 2, num_kv_heads, block_size, head_dim] elements.
// Quantized: [num_blocks, bytes_per_block] uint8 (no single element type fits a block).
py::array WholeView(const KvStorage& s) {
  const CacheConfig& c = s.config();
  if (IsQuantized(s.dtype())) {
    return ArenaView(s, py::dtype::of<uint8_t>(), {s.num_blocks(), s.bytes_per_block()},
                     {s.bytes_per_block(), 1}, 0);
  }
  const int64_t e = DTypeSize(s.dtype());
  return ArenaView(s, NumpyDTypeOf(s.dtype()),
                   {s.num_blocks(), c.num_layers, 2, c.num_kv_heads, c.block_size, c.head_dim},
                   {s.BlockStride() * e, s.LayerStride() * e, s.KvStride() * e,
                    s.HeadStride() * e, s.TokenStride() * e, e},
                   0);
}

// The rows of a C-contiguous float32 / float16 array [..., head_dim] (ValueError otherwise).
DType CheckRowsArray(const py::array& x, const char* name) {
  FKV_CHECK_ARG(x.ndim() >= 1 && x.shape(x.ndim() - 1) >= 1,
                name << " must have at least one dimension and a last dimension >= 1, got shape "
                     << ShapeString(x));
  FKV_CHECK_ARG(x.flags() & py::array::c_style, name << " must be C-contiguous");
  if (x.dtype().is(py::dtype::of<float>())) return DType::kFloat32;
  FKV_CHECK_ARG(x.dtype().is(py::dtype("float16")),
                name << " must have dtype float32 or float16, got "
                     << std::string(py::str(x.dtype())));
  return DType::kFloat16;
}

// shape with its last dimension replaced by last.
std::vector<py::ssize_t> WithLast(const py::array& x, int64_t last) {
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  shape.back() = last;
  return shape;
}

py::tuple QuantizeRowsPy(const ArrayArgument& x_arg, const std::string& dtype_name,
                         const std::string& isa_name) {
  const py::array x = x_arg.Get("x");
  const DType dtype = ParseDType(dtype_name);
  FKV_CHECK_ARG(IsQuantized(dtype), "dtype must be a quantized format ('int8', 'fp8_e4m3', "
                                    "'fp8_e5m2', 'int4'), got '" << dtype_name << "'");
  const AttentionIsa isa = ParseAttentionIsa(isa_name);
  const DType src_dtype = CheckRowsArray(x, "x");
  const int64_t d = x.shape(x.ndim() - 1);
  const int64_t rows = x.size() / d;
  const HeadRegionLayout layout = HeadRegion(dtype, d, 1);
  const int64_t bad = FindUnquantizableRow(dtype, x.data(), src_dtype, rows, d, isa);
  FKV_CHECK_ARG(bad < 0, "x cannot be quantized to " << dtype_name << ": row " << bad
                                                     << " (flattened) has a non-finite value"
                                                     << (IsAsymmetric(dtype)
                                                             ? " or a range beyond float32"
                                                             : ""));
  std::vector<uint8_t> codes(size_t(rows * layout.row_code_bytes));
  std::vector<float> params(size_t(rows * layout.params_per_row));
  QuantizeRows(dtype, x.data(), src_dtype, rows, d, codes.data(), layout.row_code_bytes,
               reinterpret_cast<uint8_t*>(params.data()), layout.row_params_bytes(), isa);
  return py::make_tuple(MoveToArray(std::move(codes), WithLast(x, layout.row_code_bytes)),
                        MoveToArray(std::move(params), WithLast(x, layout.params_per_row)));
}

py::array DequantizeRowsPy(const ArrayArgument& codes_arg, const ArrayArgument& params_arg,
                           const std::string& dtype_name, int64_t head_dim) {
  const py::array codes = codes_arg.Get("codes");
  const py::array params = params_arg.Get("params");
  const DType dtype = ParseDType(dtype_name);
  FKV_CHECK_ARG(IsQuantized(dtype), "dtype must be a quantized format, got '" << dtype_name
                                                                               << "'");
  FKV_CHECK_ARG(head_dim >= 1, "head_dim must be >= 1, got " << head_dim);
  const HeadRegionLayout layout = HeadRegion(dtype, head_dim, 1);
  FKV_CHECK_ARG(codes.dtype().is(py::dtype::of<uint8_t>()) && codes.ndim() >= 1 &&
                    codes.shape(codes.ndim() - 1) == layout.row_code_bytes &&
                    (codes.flags() & py::array::c_style),
                "codes must be a C-contiguous uint8 array [..., "
                    << layout.row_code_bytes << "], got " << std::string(py::str(codes.dtype()))
                    << " " << ShapeString(codes));
  const std::vector<py::ssize_t> params_shape = WithLast(codes, layout.params_per_row);
  FKV_CHECK_ARG(params.dtype().is(py::dtype::of<float>()) &&
                    params.ndim() == codes.ndim() &&
                    std::equal(params_shape.begin(), params_shape.end(), params.shape()) &&
                    (params.flags() & py::array::c_style),
                "params must be a C-contiguous float32 array "
                    << ShapeString(params_shape) << ", got "
                    << std::string(py::str(params.dtype())) << " " << ShapeString(params));
  const int64_t rows = codes.size() / layout.row_code_bytes;
  std::vector<float> out(size_t(rows * head_dim));
  DequantizeRows(dtype, static_cast<const uint8_t*>(codes.data()), layout.row_code_bytes,
                 static_cast<const uint8_t*>(params.data()), layout.row_params_bytes(), rows,
                 head_dim, out.data());
  return MoveToArray(std::move(out), WithLast(codes, head_dim));
}

}  // namespace

void BindKvStorage(py::module_& m) {
  m.def("quantize_rows", &QuantizeRowsPy, py::arg("x"), py::arg("dtype"), py::arg("isa") = "auto",
        "Quantize the rows (last axis, head_dim) of a C-contiguous float32 / float16 array to a "
        "quantized storage format, with the C++ write path's kernels (isa as for attention: "
        "'auto' | 'portable' | 'avx2' | 'avx512'; 'reference' runs 'portable'). Returns (codes "
        "uint8 [..., row_code_bytes], params float32 [..., params_per_row]), bit-identical to "
        "ferrum_kv.reference.quantize. ValueError for a non-finite value (or, for int8/int4, a "
        "row whose max - min overflows float32).");
  m.def("dequantize_rows", &DequantizeRowsPy, py::arg("codes"), py::arg("params"),
        py::arg("dtype"), py::arg("head_dim").noconvert(),
        "The float32 rows [..., head_dim] that codes and params (as quantize_rows returns them) "
        "read back as: what gather_kv and read_slot return for quantized storage.");

  py::class_<KvStorage, std::shared_ptr<KvStorage>>(
      m, "KvStorage",
      "K/V bytes of a pool of blocks in one 64-byte-aligned arena, block-major: "
      "[num_blocks, num_layers, 2 (K, V), num_kv_heads, block_size, head_dim]. Views are "
      "zero-copy and keep the arena alive; bfloat16 storage is viewed as uint16 bits. "
      "Quantized storage (int8, fp8_e4m3, fp8_e5m2, int4) keeps codes and float32 scales "
      "in each head region (docs/layout.md): key_cache / value_cache view the codes, "
      "key_scales / value_scales the scales, array() the raw bytes.")
      .def(py::init<const CacheConfig&>(), py::arg("config"),
           "Allocate an arena of config.num_blocks blocks (zeroed). Raises MemoryError without "
           "the memory.")
      .def_property_readonly("config", &KvStorage::config, "The CacheConfig of its geometry.")
      .def_property_readonly(
          "dtype", [](const KvStorage& s) { return DTypeName(s.dtype()); },
          "'float32' | 'float16' | 'bfloat16' | 'int8' | 'fp8_e4m3' | 'fp8_e5m2' | 'int4' "
          "(views of bfloat16 are uint16 bits, of the quantized dtypes uint8 codes).")
      .def_property_readonly("num_blocks", &KvStorage::num_blocks, "Blocks in the arena.")
      .def_property_readonly("bytes_per_block", &KvStorage::bytes_per_block,
                             "Bytes of one block: K and V, all layers.")
      .def_property_readonly("nbytes", &KvStorage::total_bytes, "Bytes of the whole arena.")
      .def("array", &WholeView,
           "Zero-copy view of the arena. Float dtypes: [num_blocks, num_layers, 2, "
           "num_kv_heads, block_size, head_dim] elements. Quantized dtypes: [num_blocks, "
           "bytes_per_block] uint8, the raw bytes of each block (docs/layout.md).")
      .def(
          "key_cache", [](const KvStorage& s, int64_t layer) { return LayerView(s, layer, 0); },
          py::arg("layer").noconvert(),
          "Zero-copy strided view of layer's keys: [num_blocks, num_kv_heads, block_size, "
          "head_dim] elements; for quantized storage the codes, uint8 [num_blocks, "
          "num_kv_heads, block_size, row_code_bytes] (head_dim, or ceil(head_dim / 2) for int4: "
          "two codes per byte, the even element in the low nibble).")
      .def(
          "value_cache", [](const KvStorage& s, int64_t layer) { return LayerView(s, layer, 1); },
          py::arg("layer").noconvert(), "Like key_cache, for values.")
      .def(
          "key_scales", [](const KvStorage& s, int64_t layer) { return ParamsView(s, layer, 0); },
          py::arg("layer").noconvert(),
          "Quantized storage only (ValueError otherwise): zero-copy strided view of layer's key "
          "parameters, float32 [num_blocks, num_kv_heads, block_size, params_per_row]: int8 "
          "(scale, offset); fp8 (scale,); int4 (scale, offset) per group of 32 elements.")
      .def(
          "value_scales",
          [](const KvStorage& s, int64_t layer) { return ParamsView(s, layer, 1); },
          py::arg("layer").noconvert(), "Like key_scales, for values.")
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
          "dtype; float32 is rounded to nearest even) under the block's lock. Quantized "
          "storage takes float32 or float16 and quantizes each (token, head) row; ValueError "
          "(nothing written) for a non-finite value. k and v may be views of this storage: "
          "they are copied before the write.")
      .def(
          "read_slot",
          [](const KvStorage& s, int32_t block, int32_t layer, int32_t offset) {
            const std::vector<py::ssize_t> shape = {s.config().num_kv_heads, s.config().head_dim};
            py::array k(NumpyDTypeOf(s.ReadDType()), shape);
            py::array v(NumpyDTypeOf(s.ReadDType()), shape);
            void* k_data = k.mutable_data();
            void* v_data = v.mutable_data();
            {
              py::gil_scoped_release release;
              s.ReadSlot(block, layer, offset, k_data, v_data);
            }
            return py::make_tuple(k, v);
          },
          py::arg("block_id").noconvert(), py::arg("layer").noconvert(), py::arg("offset").noconvert(),
          "Copies of one token's (K, V), each [num_kv_heads, head_dim] in the storage dtype "
          "(dequantized float32 for quantized storage).")
      .def("__repr__", [](const KvStorage& s) {
        return "KvStorage(num_blocks=" + std::to_string(s.num_blocks()) + ", dtype='" +
               DTypeName(s.dtype()) + "', nbytes=" + std::to_string(s.total_bytes()) + ")";
      });
}

}  // namespace ferrum_kv::bindings
