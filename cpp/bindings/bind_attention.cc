#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "bindings.h"
#include "ferrum_kv/attention.h"
#include "ferrum_kv/memory_probe.h"
#include "ferrum_kv/support/check.h"
#include "numpy_args.h"

namespace py = pybind11;

namespace ferrum_kv::bindings {

namespace {

// Raises ValueError unless array has exactly this dtype and shape and is C-contiguous.
void CheckArray(const py::array& array, const char* name, const py::dtype& dtype,
                const std::vector<py::ssize_t>& shape) {
  FKV_CHECK_ARG(array.dtype().is(dtype),
                name << " must have dtype " << std::string(py::str(dtype)) << ", got "
                     << DTypeString(array));
  const bool same_shape = array.ndim() == py::ssize_t(shape.size()) &&
                          std::equal(shape.begin(), shape.end(), array.shape());
  FKV_CHECK_ARG(same_shape, name << " must have shape " << ShapeString(shape) << ", got "
                                 << ShapeString(array));
  FKV_CHECK_ARG(array.flags() & py::array::c_style, name << " must be C-contiguous");
}

void CheckNdim(const py::array& array, const char* name, py::ssize_t ndim, const char* axes) {
  FKV_CHECK_ARG(array.ndim() == ndim, name << " must be " << ndim << "-D " << axes
                                           << ", got shape " << ShapeString(array));
}

// The arguments both kernels share, checked against q and the storage; query_lens is absent for
// decode. Returns the batch tables and the output array (allocated when out is None). The
// integer tables and the slopes are private copies (batch and options point into them): the
// kernels validate them and then read them without the GIL, while another Python thread could
// change the caller's arrays.
struct Prepared {
  PagedBatch batch;
  py::array out;
  float scale;
  AttentionOptions options;
  std::vector<int32_t> block_tables, context_lens, query_lens;
  std::vector<float> alibi_slopes;
};

template <typename T>
std::vector<T> CopyOf(const py::array& array) {
  const T* data = static_cast<const T*>(array.data());
  return std::vector<T>(data, data + array.size());
}

std::optional<py::array> Optional(const std::optional<ArrayArgument>& argument, const char* name) {
  if (!argument) return std::nullopt;
  return argument->Get(name);
}

// The optional features (attention.h), checked here with Python's conventions (None = off).
void SetFeatures(Prepared& prepared, py::ssize_t num_q_heads, std::optional<int64_t> sliding_window,
                 std::optional<double> soft_cap, const std::optional<py::array>& alibi_slopes) {
  if (sliding_window) {
    FKV_CHECK_ARG(*sliding_window >= 1 && *sliding_window <= INT32_MAX,
                  "sliding_window must be an int in [1, 2**31 - 1] or None, got "
                      << *sliding_window);
    prepared.options.sliding_window = static_cast<int32_t>(*sliding_window);
  }
  if (soft_cap) {
    const float cap = static_cast<float>(*soft_cap);
    FKV_CHECK_ARG(std::isfinite(cap) && cap > 0.0f,
                  "soft_cap must be a finite float > 0 or None, got " << *soft_cap);
    prepared.options.soft_cap = cap;
  }
  if (alibi_slopes) {
    CheckNdim(*alibi_slopes, "alibi_slopes", 1, "[num_q_heads]");
    CheckArray(*alibi_slopes, "alibi_slopes", py::dtype::of<float>(), {num_q_heads});
    prepared.alibi_slopes = CopyOf<float>(*alibi_slopes);
    prepared.options.alibi_slopes = prepared.alibi_slopes.data();
  }
}

Prepared Prepare(const py::array& q, const KvStorage& storage, const py::array& block_tables,
                 const py::array& context_lens, const std::optional<py::array>& query_lens,
                 std::optional<double> scale, std::optional<py::array> out,
                 const py::str& isa, int32_t num_threads, const py::str& precision) {
  const py::dtype f32 = py::dtype::of<float>();
  const py::dtype i32 = py::dtype::of<int32_t>();
  const int32_t head_dim = storage.config().head_dim;
  CheckNdim(q, "q", 3, query_lens ? "[num_query_tokens, num_q_heads, head_dim]"
                                  : "[batch, num_q_heads, head_dim]");
  CheckArray(q, "q", f32, {q.shape(0), q.shape(1), head_dim});
  CheckNdim(context_lens, "context_lens", 1, "[batch]");
  const py::ssize_t batch_size = context_lens.shape(0);
  if (!query_lens) {
    CheckArray(context_lens, "context_lens", i32, {q.shape(0)});
  } else {
    CheckArray(context_lens, "context_lens", i32, {batch_size});
    CheckArray(*query_lens, "query_lens", i32, {batch_size});
  }
  CheckNdim(block_tables, "block_tables", 2, "[batch, max_blocks]");
  CheckArray(block_tables, "block_tables", i32, {batch_size, block_tables.shape(1)});
  if (out) {
    CheckArray(*out, "out", f32, {q.shape(0), q.shape(1), q.shape(2)});
    FKV_CHECK_ARG(out->writeable(), "out must be writeable");
    FKV_CHECK_ARG(!OverlapsArena(*out, storage),
                  "out must not be a view of the storage's K/V arena (it would overwrite the "
                  "cached K/V)");
  } else {
    out = py::array(f32, {q.shape(0), q.shape(1), q.shape(2)});
  }
  FKV_CHECK_ARG(block_tables.shape(1) <= INT32_MAX && q.shape(1) <= INT32_MAX,
                "block_tables and q dimensions must fit in int32");
  Prepared prepared;
  prepared.block_tables = CopyOf<int32_t>(block_tables);
  prepared.context_lens = CopyOf<int32_t>(context_lens);
  prepared.batch.block_tables = prepared.block_tables.data();
  prepared.batch.context_lens = prepared.context_lens.data();
  if (query_lens) {
    prepared.query_lens = CopyOf<int32_t>(*query_lens);
    prepared.batch.query_lens = prepared.query_lens.data();
  }
  prepared.batch.batch_size = static_cast<int32_t>(batch_size);
  prepared.batch.max_blocks = static_cast<int32_t>(block_tables.shape(1));
  prepared.out = *out;
  prepared.scale = static_cast<float>(scale ? *scale : 1.0 / std::sqrt(double(head_dim)));
  prepared.options.isa = ParseAttentionIsa(isa);
  prepared.options.precision = ParseAttentionPrecision(precision);
  prepared.options.num_threads = num_threads;
  return prepared;
}

constexpr const char* kDecodeDoc = R"doc(Paged-attention decode over explicit block tables.

Parameters
----------
q : np.ndarray, [batch, num_q_heads, head_dim], float32, C-contiguous
    One query token per sequence; num_q_heads a multiple of the storage's num_kv_heads. Every
    array argument may also be a CPU DLPack tensor (torch.Tensor, ...), read zero-copy.
storage : KvStorage
layer : int
block_tables : np.ndarray, [batch, max_blocks], int32 (padding -1 past each sequence's blocks)
context_lens : np.ndarray, [batch], int32, each in [1, max_blocks * block_size]
scale : float, optional
    Softmax scale; default 1 / sqrt(head_dim).
out : np.ndarray or a CPU DLPack tensor (torch.Tensor), optional
    Like q, writeable; written in full, in place, and returned (the object given). A new array
    when omitted.
isa : str
    "auto" (default: the first of attention_isas()), "amx" (the AVX-512 kernels with AMX tiles
    for precision="fast" over int8), "avx512", "avx2", "portable" or "reference" (the float64
    scalar oracle).
num_threads : int
    In [0, 1024]; 0 (default) uses get_num_threads() (the CPUs this process may run on, unless
    set_num_threads changed it). Fewer are used when the system cannot start more.
sliding_window : int, optional
    Attend only to the last sliding_window positions (the query's own included); >= 1.
soft_cap : float, optional
    Logit soft cap (> 0): logits -> soft_cap * tanh(logits / soft_cap), on the scaled logits.
alibi_slopes : np.ndarray, [num_q_heads], float32, optional
    ALiBi: adds alibi_slopes[h] * (key_pos - query_pos) to query head h's logits (after the cap).
precision : str
    "exact" (default): float32 arithmetic on the stored values. "fast": low-precision dot products
    where the kernel variant has them on this CPU (attention_fast_isas(dtype)); relative error
    below 1.5e-2 against float64. Elsewhere "fast" runs the exact code.

Returns
-------
np.ndarray, [batch, num_q_heads, head_dim], float32: out.

Raises ValueError for a bad shape, dtype or value (out overlapping q or the storage's arena
included), IndexError for a layer out of range. The GIL is released during the computation; the caller keeps the blocks read unchanged.)doc";

constexpr const char* kPrefillDoc = R"doc(Paged-attention (chunked) prefill over explicit block tables.

Parameters
----------
q : np.ndarray, [sum(query_lens), num_q_heads, head_dim], float32, C-contiguous
    The last query_lens[i] tokens of sequence i, sequence after sequence; row j of sequence i is
    position context_lens[i] - query_lens[i] + j and attends causally to positions 0..itself.
storage : KvStorage
layer : int
block_tables : np.ndarray, [batch, max_blocks], int32
context_lens : np.ndarray, [batch], int32, >= 1 (K/V of all these tokens, chunk included, is in
    the cache)
query_lens : np.ndarray, [batch], int32, each in [1, context_lens[i]]
scale, out, isa, num_threads, sliding_window, soft_cap, alibi_slopes, precision
    As in paged_attention_decode_tables (the window and ALiBi distances use each row's position).

Returns
-------
np.ndarray, [sum(query_lens), num_q_heads, head_dim], float32: out.)doc";

}  // namespace

void BindAttention(py::module_& m) {
  m.def(
      "paged_attention_decode_tables",
      [](const ArrayArgument& q_arg, const KvStorage& storage, int32_t layer,
         const ArrayArgument& block_tables, const ArrayArgument& context_lens,
         std::optional<double> scale, std::optional<ArrayArgument> out, const py::str& isa,
         int32_t num_threads, std::optional<int64_t> sliding_window,
         std::optional<double> soft_cap, std::optional<ArrayArgument> alibi_slopes,
         const py::str& precision) {
        const py::array q = q_arg.Get("q");
        Prepared p = Prepare(q, storage, block_tables.Get("block_tables"),
                             context_lens.Get("context_lens"), std::nullopt, scale,
                             Optional(out, "out"), isa, num_threads, precision);
        SetFeatures(p, q.shape(1), sliding_window, soft_cap, Optional(alibi_slopes, "alibi_slopes"));
        const auto* q_data = static_cast<const float*>(q.data());
        auto* out_data = static_cast<float*>(p.out.mutable_data());
        const auto num_q_heads = static_cast<int32_t>(q.shape(1));
        {
          py::gil_scoped_release release;
          PagedAttentionDecode(q_data, num_q_heads, storage, layer, p.batch, p.scale, out_data,
                               p.options);
        }
        return out ? *out : ArrayArgument(p.out);  // the caller's out object itself
      },
      py::arg("q"), py::arg("storage"), py::arg("layer").noconvert(), py::arg("block_tables"),
      py::arg("context_lens"), py::arg("scale") = py::none(), py::arg("out") = py::none(),
      py::arg("isa") = "auto", py::arg("num_threads").noconvert() = 0, py::kw_only(),
      py::arg("sliding_window").noconvert() = py::none(), py::arg("soft_cap") = py::none(),
      py::arg("alibi_slopes") = py::none(), py::arg("precision") = "exact", kDecodeDoc);
  m.def(
      "paged_attention_prefill_tables",
      [](const ArrayArgument& q_arg, const KvStorage& storage, int32_t layer,
         const ArrayArgument& block_tables, const ArrayArgument& context_lens,
         const ArrayArgument& query_lens, std::optional<double> scale,
         std::optional<ArrayArgument> out, const py::str& isa, int32_t num_threads,
         std::optional<int64_t> sliding_window, std::optional<double> soft_cap,
         std::optional<ArrayArgument> alibi_slopes, const py::str& precision) {
        const py::array q = q_arg.Get("q");
        Prepared p = Prepare(q, storage, block_tables.Get("block_tables"),
                             context_lens.Get("context_lens"), query_lens.Get("query_lens"), scale,
                             Optional(out, "out"), isa, num_threads, precision);
        SetFeatures(p, q.shape(1), sliding_window, soft_cap, Optional(alibi_slopes, "alibi_slopes"));
        const auto* q_data = static_cast<const float*>(q.data());
        auto* out_data = static_cast<float*>(p.out.mutable_data());
        const auto num_q_heads = static_cast<int32_t>(q.shape(1));
        const int64_t num_tokens = q.shape(0);
        {
          py::gil_scoped_release release;
          PagedAttentionPrefill(q_data, num_tokens, num_q_heads, storage, layer, p.batch,
                                p.scale, out_data, p.options);
        }
        return out ? *out : ArrayArgument(p.out);  // the caller's out object itself
      },
      py::arg("q"), py::arg("storage"), py::arg("layer").noconvert(), py::arg("block_tables"),
      py::arg("context_lens"), py::arg("query_lens"), py::arg("scale") = py::none(),
      py::arg("out") = py::none(), py::arg("isa") = "auto", py::arg("num_threads").noconvert() = 0,
      py::kw_only(), py::arg("sliding_window").noconvert() = py::none(), py::arg("soft_cap") = py::none(),
      py::arg("alibi_slopes") = py::none(), py::arg("precision") = "exact", kPrefillDoc);
  m.def(
      "attention_isas",
      [] {
        std::vector<std::string> names;
        for (AttentionIsa isa : {AttentionIsa::kAmx, AttentionIsa::kAvx512, AttentionIsa::kAvx2,
                                 AttentionIsa::kPortable, AttentionIsa::kReference}) {
          if (AttentionIsaSupported(isa)) names.emplace_back(AttentionIsaName(isa));
        }
        return names;
      },
      "The attention kernel variants this CPU runs, fastest first (\"auto\" picks the first).");
  m.def(
      "attention_fast_isas",
      [](const std::string& dtype) {
        const DType parsed = ParseDType(dtype);
        std::vector<std::string> names;
        for (AttentionIsa isa : {AttentionIsa::kAmx, AttentionIsa::kAvx512, AttentionIsa::kAvx2,
                                 AttentionIsa::kPortable}) {
          if (AttentionIsaSupported(isa) && AttentionFastSupported(isa, parsed)) {
            names.emplace_back(AttentionIsaName(isa));
          }
        }
        return names;
      },
      py::arg("dtype"),
      "The attention kernel variants whose precision=\"fast\" runs low-precision dot products "
      "over K/V stored as dtype on this CPU; the others run the exact code for \"fast\".");
  m.def(
      "memory_read_probe",
      [](const ArrayArgument& data_arg, int32_t num_threads) {
        const py::array data = data_arg.Get("data");
        FKV_CHECK_ARG(data.flags() & py::array::c_style, "data must be C-contiguous");
        const void* pointer = data.data();
        const int64_t bytes = data.nbytes();
        py::gil_scoped_release release;
        return SumWords(pointer, bytes, num_threads);
      },
      py::arg("data"), py::arg("num_threads").noconvert() = 0,
      "Read every 8-byte word of a C-contiguous array (nbytes a multiple of 8) on num_threads "
      "threads and return their wrapping sum: the read-bandwidth ceiling for the benchmarks.");
}

}  // namespace ferrum_kv::bindings
