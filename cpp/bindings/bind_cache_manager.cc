#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "bindings.h"
#include "dlpack_export.h"
#include "ferrum_kv/cache_manager.h"
#include "ferrum_kv/support/check.h"
#include "numpy_args.h"

namespace py = pybind11;

namespace ferrum_kv::bindings {

namespace {

// The NumPy face of BatchMetadata: every field a new int32 array that owns its memory.
struct PyBatchMetadata {
  py::array block_tables;    // [B, max_blocks], padding -1
  py::array context_lens;    // [B]
  py::array indptr;          // [B + 1]
  py::array indices;         // [nnz]
  py::array last_block_len;  // [B]
  py::array slot_mapping;    // [B]
  py::array num_computed;    // [B]
};

PyBatchMetadata ToPython(BatchMetadata&& m) {
  const py::ssize_t b = m.batch_size;
  return PyBatchMetadata{
      MoveToArray(std::move(m.block_tables), {b, py::ssize_t(m.max_blocks)}),
      MoveToArray(std::move(m.context_lens), {b}),
      MoveToArray(std::move(m.indptr), {b + 1}),
      MoveToArray(std::move(m.indices), {py::ssize_t(m.indices.size())}),
      MoveToArray(std::move(m.last_block_len), {b}),
      MoveToArray(std::move(m.slot_mapping), {b}),
      MoveToArray(std::move(m.num_computed), {b}),
  };
}

py::dict StatsDict(const CacheStats& s) {
  py::dict d;
  d["num_blocks"] = s.num_blocks;
  d["free_blocks"] = s.free_blocks;
  d["used_blocks"] = s.used_blocks;
  d["num_host_blocks"] = s.num_host_blocks;
  d["free_host_blocks"] = s.free_host_blocks;
  d["num_sequences"] = s.num_sequences;
  d["num_swapped_sequences"] = s.num_swapped_sequences;
  d["blocks_allocated"] = s.blocks_allocated;
  d["allocation_failures"] = s.allocation_failures;
  d["cow_copies"] = s.cow_copies;
  d["swap_outs"] = s.swap_outs;
  d["swap_ins"] = s.swap_ins;
  d["blocks_swapped_out"] = s.blocks_swapped_out;
  d["blocks_swapped_in"] = s.blocks_swapped_in;
  d["bytes_used"] = s.bytes_used;
  d["bytes_total"] = s.bytes_total;
  d["cached_blocks"] = s.cached_blocks;
  d["evictable_blocks"] = s.evictable_blocks;
  d["prefix_query_tokens"] = s.prefix_query_tokens;
  d["prefix_hit_tokens"] = s.prefix_hit_tokens;
  d["evictions"] = s.evictions;
  d["events_dropped"] = s.events_dropped;
  d["prompt_logits"] = s.prompt_logits;
  d["prompt_logits_hits"] = s.prompt_logits_hits;
  d["tier_blocks_imported"] = s.tier_blocks_imported;
  d["tier_writes_queued"] = s.tier_writes_queued;
  d["tier_writes_skipped"] = s.tier_writes_skipped;
  d["tier_write_queue"] = s.tier_write_queue;
  return d;
}

// The pressure callback of each PagedKvCache instance that has one, for the garbage collector:
// the C++ cache owns the callable (through WrapPressureCallback's holder), and a callable that
// refers back to its cache (a bound method of the scheduler that owns the cache, a lambda) makes
// a cycle the collector can only break if the cache's tp_traverse shows it the callable.
// Guarded by the GIL. Keys: the Python instances; values: the holder that owns the callable.
std::unordered_map<PyObject*, const py::object*>& PressureCallbacks() {
  static auto* callbacks = new std::unordered_map<PyObject*, const py::object*>();
  return *callbacks;
}

// Wraps self's callable so that the C++ side may copy and destroy it without the GIL, and
// registers it in PressureCallbacks() until it is destroyed.
PagedKvCache::PressureCallback WrapPressureCallback(py::handle self, py::object callable) {
  PyObject* const key = self.ptr();
  std::shared_ptr<py::object> holder(new py::object(std::move(callable)), [key](py::object* p) {
    py::gil_scoped_acquire gil;
    auto& callbacks = PressureCallbacks();
    const auto it = callbacks.find(key);
    if (it != callbacks.end() && it->second == p) callbacks.erase(it);
    delete p;
  });
  PressureCallbacks()[key] = holder.get();
  return [holder](PressureLevel level) {
    py::gil_scoped_acquire gil;
    try {
      (*holder)(PressureName(level));
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("ferrum_kv memory-pressure callback");
    }
  };
}

// Garbage-collector support for PagedKvCache (see PressureCallbacks).
void SetUpGarbageCollection(PyHeapTypeObject* heap_type) {
  PyTypeObject* type = &heap_type->ht_type;
  type->tp_flags |= Py_TPFLAGS_HAVE_GC;
  type->tp_traverse = [](PyObject* self, visitproc visit, void* arg) -> int {
    Py_VISIT(Py_TYPE(self));
    const auto& callbacks = PressureCallbacks();
    const auto it = callbacks.find(self);
    if (it != callbacks.end()) Py_VISIT(it->second->ptr());
    return 0;
  };
  type->tp_clear = [](PyObject* self) -> int {
    if (PressureCallbacks().count(self) != 0) {  // only initialised caches have one
      py::cast<PagedKvCache&>(py::handle(self)).SetPressureCallback(nullptr);
    }
    return 0;
  };
}

py::dict EventDict(const CacheEvent& e) {
  static const char* const kKinds[] = {"stored", "removed", "cleared"};
  py::dict d;
  d["seq_no"] = e.seq_no;
  d["type"] = kKinds[int(e.kind)];
  d["hash"] = e.kind == CacheEvent::Kind::kAllCleared
                  ? py::bytes()
                  : py::bytes(reinterpret_cast<const char*>(e.hash.data()), e.hash.size());
  d["block_id"] = e.block;
  return d;
}

}  // namespace

void BindCacheManager(py::module_& m) {
  py::class_<PyBatchMetadata>(m, "BatchMetadata",
                              "Per-step arrays for attention kernels, all int32: block_tables "
                              "[B, max_blocks] (padding -1), context_lens [B], CSR indptr [B+1], "
                              "indices [nnz], last_block_len [B] (in (0, block_size]), "
                              "slot_mapping [B] (slot of each sequence's last token), "
                              "num_computed [B] (leading tokens whose K/V is written, in "
                              "[0, context_lens]).")
      .def_readonly("block_tables", &PyBatchMetadata::block_tables,
                    "[B, max_blocks] int32: row i is sequence i's block ids, padded with -1.")
      .def_readonly("context_lens", &PyBatchMetadata::context_lens,
                    "[B] int32: tokens of each sequence (>= 1).")
      .def_readonly("indptr", &PyBatchMetadata::indptr,
                    "[B + 1] int32: CSR row pointers into indices (indptr[0] = 0).")
      .def_readonly("indices", &PyBatchMetadata::indices,
                    "[nnz] int32: block ids, sequence after sequence (nnz = indptr[B]).")
      .def_readonly("last_block_len", &PyBatchMetadata::last_block_len,
                    "[B] int32: tokens in each sequence's last block, in (0, block_size].")
      .def_readonly("slot_mapping", &PyBatchMetadata::slot_mapping,
                    "[B] int32: slot of each sequence's last token (where a decode step writes "
                    "its K/V).")
      .def_readonly("num_computed", &PyBatchMetadata::num_computed,
                    "[B] int32: leading tokens of each sequence whose K/V is written, in "
                    "[0, context_lens].");

  py::class_<PagedKvCache>(m, "PagedKvCache",
                           "Sequences, block tables, copy-on-write fork, swap to the host tier "
                           "and batch metadata over one BlockPool + KvStorage. Thread-safe; every "
                           "call is all-or-nothing.",
                           py::custom_type_setup(SetUpGarbageCollection))
      .def(py::init<const CacheConfig&, int64_t>(), py::arg("config"), py::kw_only(),
           py::arg("tier_queue_blocks") = 0,
           "Allocate the device arena (config.num_blocks blocks) and the host arena "
           "(config.num_host_blocks, none if 0). tier_queue_blocks > 0: a tier write queue of "
           "that many blocks (for ferrum_kv.PagedKvCache(tiers=...); needs prefix caching). "
           "Raises ValueError for a bad config, MemoryError without the memory.")
      .def_property_readonly("config", &PagedKvCache::config, "The CacheConfig (read-only).")
      .def_property_readonly("storage", &PagedKvCache::storage, "The device-tier KvStorage.")
      .def_property_readonly("host_storage", &PagedKvCache::host_storage,
                             "The host-tier KvStorage, or None without one.")
      .def(
          "add_sequence",
          [](PagedKvCache& cache, SeqId seq_id, py::handle tokens_obj, const py::bytes& namespace_id,
             int32_t priority) {
            const std::vector<int32_t> tokens = AsInt32Vector(tokens_obj, "tokens");
            const int32_t* data = tokens.data();
            const int64_t n = tokens.size();
            std::string ns = namespace_id;
            py::gil_scoped_release release;
            return cache.AddSequence(seq_id, data, n, ns, priority);
          },
          py::arg("seq_id").noconvert(), py::arg("tokens"), py::kw_only(), py::arg("namespace") = py::bytes(),
          py::arg("priority").noconvert() = 0,
          "Create seq_id holding tokens (1-D int array, >= 1 token) and give it blocks. With "
          "prefix caching, reuses the longest run of leading full blocks cached under the same "
          "namespace (bytes: tenant, model, adapter) and returns how many tokens that covers "
          "(a multiple of block_size, < len(tokens)); 0 without prefix caching. priority: "
          "retention priority of the blocks it releases (priority_lru eviction keeps higher "
          "ones longer).")
      .def(
          "add_sequence_with_logits",
          [](PagedKvCache& cache, SeqId seq_id, py::handle tokens_obj, const py::bytes& namespace_id,
             int32_t priority) -> py::tuple {
            const std::vector<int32_t> tokens = AsInt32Vector(tokens_obj, "tokens");
            const int32_t* data = tokens.data();
            const int64_t n = tokens.size();
            std::string ns = namespace_id;
            std::vector<float> logits;
            int64_t reused;
            {
              py::gil_scoped_release release;
              reused = cache.AddSequenceWithLogits(seq_id, data, n, ns, priority, &logits);
            }
            if (logits.empty()) return py::make_tuple(reused, py::none());
            const py::ssize_t vocab = py::ssize_t(logits.size());
            return py::make_tuple(reused, MoveToArray(std::move(logits), {vocab}));
          },
          py::arg("seq_id").noconvert(), py::arg("tokens"), py::kw_only(), py::arg("namespace") = py::bytes(),
          py::arg("priority").noconvert() = 0,
          "add_sequence, and a whole-prompt hit where it can: returns (cached_tokens, logits). If "
          "these exact tokens were stored with store_logits in this namespace and their blocks "
          "are still cached, the sequence reuses all of them: (len(tokens), the stored logits "
          "as a new float32 array); the engine samples from them and skips prefill. Otherwise "
          "(what add_sequence returns, None).")
      .def(
          "store_logits",
          [](PagedKvCache& cache, SeqId seq_id, py::handle logits_obj) {
            py::array any = ArrayOf(logits_obj, "logits");
            if (!any) any = py::array::ensure(logits_obj);
            if (!any || IsBFloat16Array(any) ||
                (any.dtype().kind() != 'f' && any.dtype().kind() != 'i' &&
                 any.dtype().kind() != 'u')) {
              throw py::type_error("logits must be a 1-D array of real numbers, got " +
                                   (any ? "dtype " + DTypeString(any)
                                        : std::string(py::str(py::type::of(logits_obj)))));
            }
            const auto logits =
                py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(any);
            if (logits.ndim() != 1) {
              throw py::value_error("logits must be 1-D (one value per vocabulary entry), got "
                                    "shape " + ShapeString(logits));
            }
            const float* data = logits.data();
            const int64_t n = logits.size();
            py::gil_scoped_release release;
            cache.StoreLogits(seq_id, data, n);
          },
          py::arg("seq_id").noconvert(), py::arg("logits"),
          "Keep logits (1-D, converted to float32) as what follows the sequence's tokens, with a "
          "copy of its partly filled last block, for add_sequence_with_logits. Needs "
          "CacheConfig(max_prompt_logits > 0) and every token's K/V written "
          "(mark_computed(seq_id, num_tokens)); InvalidStateError otherwise. Storing the same "
          "prompt again replaces its logits; beyond max_prompt_logits the least recently used "
          "prompt is dropped. OutOfBlocksError if no block is free or reclaimable for the copy.")
      .def(
          "append_tokens",
          [](PagedKvCache& cache, SeqId seq_id, py::handle tokens_obj) {
            const std::vector<int32_t> tokens = AsInt32Vector(tokens_obj, "tokens");
            const int32_t* data = tokens.data();
            const int64_t n = tokens.size();
            py::gil_scoped_release release;
            cache.AppendTokens(seq_id, data, n);
          },
          py::arg("seq_id").noconvert(), py::arg("tokens"),
          "Append tokens (1-D int array, may be empty; ids >= 0) to a resident sequence, taking "
          "fresh blocks only when its last block fills; a shared, partly filled last block is "
          "copied first (copy-on-write). The new tokens are not computed: write their K/V "
          "(slot_mapping) and mark_computed. Raises KeyError for an unknown seq_id, "
          "InvalidStateError if it is swapped out, ValueError for a negative token id, "
          "OutOfBlocksError when the blocks are short (nothing changes).")
      .def(
          "append_batch",
          [](PagedKvCache& cache, py::handle seq_ids_obj, py::handle tokens_obj) {
            const std::vector<int64_t> seq_ids = AsInt64Vector(seq_ids_obj, "seq_ids");
            const std::vector<int32_t> tokens = AsInt32Vector(tokens_obj, "tokens");
            FKV_CHECK_ARG(seq_ids.size() == tokens.size(),
                          "seq_ids and tokens must have the same length, got "
                              << seq_ids.size() << " and " << tokens.size());
            const int64_t* ids = seq_ids.data();
            const int32_t* data = tokens.data();
            const int64_t n = tokens.size();
            py::gil_scoped_release release;
            cache.AppendBatch(ids, data, n);
          },
          py::arg("seq_ids"), py::arg("tokens"),
          "One decode step: append tokens[i] to seq_ids[i] (distinct ids). All-or-nothing. The "
          "tokens before each appended one count as computed (a decode token is sampled from "
          "its predecessor's logits): with prefix caching, blocks they filled are published.")
      .def("can_allocate", py::overload_cast<int64_t>(&PagedKvCache::CanAllocate, py::const_),
           py::arg("num_tokens").noconvert(),
           "Whether a sequence of num_tokens tokens, none of them cached, would fit now (free "
           "plus evictable blocks). Prefix hits are not discounted: pass the tokens instead to "
           "ask about a prompt. Raises ValueError for num_tokens < 0.")
      .def(
          "can_allocate",
          [](const PagedKvCache& cache, py::handle tokens_obj, const py::bytes& namespace_id) {
            // Reached by anything the int overload refused: a float or a string is neither.
            const bool array_like = (PySequence_Check(tokens_obj.ptr()) &&
                                     !PyUnicode_Check(tokens_obj.ptr()) &&
                                     !PyBytes_Check(tokens_obj.ptr())) ||
                                    py::isinstance<py::array>(tokens_obj);
            if (!array_like) {
              throw py::type_error("can_allocate takes an int (a token count) or a 1-D int array "
                                   "of tokens, got " +
                                   std::string(py::str(py::type::of(tokens_obj).attr("__name__"))));
            }
            const std::vector<int32_t> tokens = AsInt32Vector(tokens_obj, "tokens");
            const int32_t* data = tokens.data();
            const int64_t n = tokens.size();
            std::string ns = namespace_id;
            py::gil_scoped_release release;
            return cache.CanAllocate(data, n, ns);
          },
          py::arg("tokens"), py::kw_only(), py::arg("namespace") = py::bytes(),
          "Whether add_sequence(seq_id, tokens, namespace=namespace) would succeed now: the "
          "prompt's prefix hits (cached_prefix_len) need no fresh block. tokens: 1-D int array, "
          ">= 1 token. Changes nothing. Raises ValueError for an empty prompt or a negative "
          "token id.")
      .def(
          "cached_prefix_len",
          [](const PagedKvCache& cache, py::handle tokens_obj, const py::bytes& namespace_id) {
            const std::vector<int32_t> tokens = AsInt32Vector(tokens_obj, "tokens");
            const int32_t* data = tokens.data();
            const int64_t n = tokens.size();
            std::string ns = namespace_id;
            py::gil_scoped_release release;
            return cache.CachedPrefixLen(data, n, ns);
          },
          py::arg("tokens"), py::kw_only(), py::arg("namespace") = py::bytes(),
          "How many leading tokens add_sequence(seq_id, tokens, namespace=namespace) would "
          "reuse from the prefix cache now (what it would return: a multiple of block_size, < "
          "len(tokens); 0 without prefix caching). Read-only: no statistics, no eviction order "
          "change. tokens: 1-D int array, >= 1 token. Raises ValueError for an empty prompt or "
          "a negative token id.")
      .def("can_append", &PagedKvCache::CanAppend, py::arg("seq_id").noconvert(), py::arg("num_tokens").noconvert(),
           "Whether append_tokens of num_tokens tokens to seq_id would succeed now (counting a "
           "copy-on-write copy of a shared last block); False for a swapped-out sequence. "
           "Raises KeyError for an unknown seq_id, ValueError for num_tokens < 0.")
      .def("mark_computed", &PagedKvCache::MarkComputed, py::arg("seq_id").noconvert(),
           py::arg("num_tokens").noconvert(),
           "The K/V of the first num_tokens tokens is written (monotonic). With prefix caching, "
           "full blocks among them become findable by later sequences.")
      .def(
          "mark_computed_batch",
          [](PagedKvCache& cache, py::handle seq_ids_obj, py::handle num_tokens_obj) {
            const std::vector<int64_t> seq_ids = AsInt64Vector(seq_ids_obj, "seq_ids");
            const std::vector<int64_t> num_tokens = AsInt64Vector(num_tokens_obj, "num_tokens");
            FKV_CHECK_ARG(seq_ids.size() == num_tokens.size(),
                          "seq_ids and num_tokens must have the same length, got "
                              << seq_ids.size() << " and " << num_tokens.size());
            const int64_t* ids = seq_ids.data();
            const int64_t* counts = num_tokens.data();
            const int64_t n = seq_ids.size();
            py::gil_scoped_release release;
            cache.MarkComputedBatch(ids, counts, n);
          },
          py::arg("seq_ids"), py::arg("num_tokens").noconvert(),
          "mark_computed(seq_ids[i], num_tokens[i]) for a whole batch in one call; the batch is "
          "validated before anything changes.")
      .def(
          "fork",
          [](PagedKvCache& cache, SeqId parent_id, SeqId child_id,
             std::optional<int64_t> num_tokens) {
            py::gil_scoped_release release;
            if (num_tokens) {
              cache.Fork(parent_id, child_id, *num_tokens);
            } else {
              cache.Fork(parent_id, child_id);
            }
          },
          py::arg("parent_id").noconvert(), py::arg("child_id").noconvert(), py::kw_only(),
          py::arg("num_tokens").noconvert() = py::none(),
          "child shares every block of parent; the first append into a shared, partly filled "
          "block copies it first. num_tokens: share only the parent's first num_tokens tokens "
          "(1 <= num_tokens <= num_tokens(parent_id), else ValueError; nothing changes): the child "
          "holds those tokens and their blocks, its computed count min(the parent's, num_tokens), "
          "and appends its own tokens after them. Raises KeyError for an unknown parent, "
          "ValueError if child_id exists, InvalidStateError if the parent is swapped out.")
      .def(
          "free_sequence",
          [](PagedKvCache& cache, SeqId seq_id, std::optional<int64_t> num_computed) {
            py::gil_scoped_release release;
            if (num_computed) {
              cache.FreeSequence(seq_id, *num_computed);
            } else {
              cache.FreeSequence(seq_id);
            }
          },
          py::arg("seq_id").noconvert(), py::kw_only(), py::arg("num_computed").noconvert() = py::none(),
          "Forget seq_id and release its blocks (device or host). With prefix caching, its "
          "published blocks stay cached (evictable) for later prompts. num_computed: first "
          "mark_computed(seq_id, num_computed), so that a finished request's last full block "
          "is published too (decode steps mark every token but the last one; pass how many "
          "tokens have K/V written). Raises KeyError for an unknown seq_id, ValueError unless "
          "0 <= num_computed <= num_tokens (nothing changes).")
      .def("swap_out", &PagedKvCache::SwapOut, py::arg("seq_id").noconvert(),
           py::call_guard<py::gil_scoped_release>(),
           "Copy the sequence's blocks to the host tier and free its device blocks.")
      .def("swap_in", &PagedKvCache::SwapIn, py::arg("seq_id").noconvert(),
           py::call_guard<py::gil_scoped_release>(),
           "Copy the sequence back into fresh device blocks (its block ids may change).")
      .def("is_swapped", &PagedKvCache::IsSwapped, py::arg("seq_id").noconvert(),
           "Whether the sequence's blocks are in the host tier (swap_out). Raises KeyError for "
           "an unknown seq_id.")
      .def("num_tokens", &PagedKvCache::NumTokens, py::arg("seq_id").noconvert(),
           "The sequence's token count (>= 1). Raises KeyError for an unknown seq_id.")
      .def("num_computed", &PagedKvCache::NumComputed, py::arg("seq_id").noconvert(),
           "How many leading tokens have their K/V written: raised by mark_computed, prefix "
           "hits and decode steps (append_batch); in [0, num_tokens]. Attention over the "
           "sequence needs it at least at the query tokens' start. Raises KeyError for an "
           "unknown seq_id.")
      .def(
          "tokens",
          [](const PagedKvCache& cache, SeqId seq_id) {
            std::vector<int32_t> tokens = cache.Tokens(seq_id);
            const py::ssize_t n = py::ssize_t(tokens.size());
            return MoveToArray(std::move(tokens), {n});
          },
          py::arg("seq_id").noconvert(), "The sequence's token ids (int32 copy).")
      .def(
          "block_table",
          [](const PagedKvCache& cache, SeqId seq_id) {
            std::vector<BlockId> blocks = cache.BlockTable(seq_id);
            const py::ssize_t n = py::ssize_t(blocks.size());
            return MoveToArray(std::move(blocks), {n});
          },
          py::arg("seq_id").noconvert(),
          "The sequence's block ids (int32 copy; host-tier ids while swapped out).")
      .def(
          "slot_mapping",
          [](const PagedKvCache& cache, SeqId seq_id, int64_t start, int64_t end) {
            std::vector<int32_t> slots = cache.SlotMapping(seq_id, start, end);
            const py::ssize_t n = py::ssize_t(slots.size());
            return MoveToArray(std::move(slots), {n});
          },
          py::arg("seq_id").noconvert(), py::arg("start").noconvert(), py::arg("end").noconvert(),
          "int32 slots (block_id * block_size + offset) of token positions [start, end).")
      .def(
          "batch_metadata",
          [](const PagedKvCache& cache, py::handle seq_ids_obj) {
            const std::vector<int64_t> seq_ids = AsInt64Vector(seq_ids_obj, "seq_ids");
            const int64_t* ids = seq_ids.data();
            const int64_t n = seq_ids.size();
            BatchMetadata metadata;
            {
              py::gil_scoped_release release;
              metadata = cache.BuildBatchMetadata(ids, n);
            }
            return ToPython(std::move(metadata));
          },
          py::arg("seq_ids"), "BatchMetadata for resident sequences (new int32 arrays).")
      .def(
          "write_kv",
          [](PagedKvCache& cache, int32_t layer, py::handle slots_obj, const ArrayArgument& k_arg,
             const ArrayArgument& v_arg) {
            const py::array k = k_arg.Get("k");
            const py::array v = v_arg.Get("v");
            const std::vector<int32_t> slots = AsInt32Vector(slots_obj, "slots");
            const CacheConfig& c = cache.config();
            const std::vector<py::ssize_t> shape = {py::ssize_t(slots.size()), c.num_kv_heads,
                                                    c.head_dim};
            const DType k_dtype = CheckFloatArray(k, "k", shape, c.dtype);
            const DType v_dtype = CheckFloatArray(v, "v", shape, c.dtype);
            FKV_CHECK_ARG(k_dtype == v_dtype, "k and v must have the same dtype");
            const int32_t* slot_data = slots.data();
            const int64_t n = slots.size();
            // K/V taken from the cache's own arena (a view) could overlap the slots written:
            // they are copied first, so the result is what the arrays held at the call.
            std::vector<uint8_t> k_copy, v_copy;
            const void* k_data = DataOutsideArena(k, *cache.storage(), &k_copy);
            const void* v_data = DataOutsideArena(v, *cache.storage(), &v_copy);
            py::gil_scoped_release release;
            cache.WriteKv(layer, slot_data, n, k_data, v_data, k_dtype);
          },
          py::arg("layer").noconvert(), py::arg("slots"), py::arg("k"), py::arg("v"),
          "Scatter K/V ([n, num_kv_heads, head_dim] each; float32, rounded to the storage "
          "dtype, or the storage dtype itself; quantized storage takes float32 or float16 and "
          "quantizes each (token, head) row) into slots ([n] int32, block_id * block_size + "
          "offset); slot -1 is skipped. Every slot is validated before any write: IndexError "
          "for one out of range, InvalidStateError for one in a block that no sequence or "
          "cache entry holds (slots taken before free_sequence or swap_out); ValueError for a "
          "shape or dtype mismatch, or a non-finite value for quantized storage. Takes no lock over the data: the scheduler keeps the "
          "blocks from being freed meanwhile. k and v may be views of the cache's own "
          "storage: they are copied before the write.")
      .def(
          "gather_kv",
          [](const PagedKvCache& cache, SeqId seq_id, int32_t layer) {
            std::vector<uint8_t> k, v;
            int64_t num_tokens;
            {
              py::gil_scoped_release release;
              num_tokens = cache.GatherKv(seq_id, layer, &k, &v);
            }
            const CacheConfig& c = cache.config();
            const std::vector<py::ssize_t> shape = {num_tokens, c.num_kv_heads, c.head_dim};
            const DType read_dtype = cache.storage()->ReadDType();
            const py::dtype dtype = NumpyDTypeOf(read_dtype);
            return py::make_tuple(StorageArray(MoveToArray(std::move(k), dtype, shape), read_dtype),
                                  StorageArray(MoveToArray(std::move(v), dtype, shape), read_dtype));
          },
          py::arg("seq_id").noconvert(), py::arg("layer").noconvert(),
          "Contiguous copies (K, V), each [num_tokens, num_kv_heads, head_dim] in the storage "
          "dtype (dequantized float32 for quantized storage), in token order, from whichever "
          "tier holds the sequence.")
      .def("reset_prefix_cache", &PagedKvCache::ResetPrefixCache,
           py::call_guard<py::gil_scoped_release>(),
           "Drop every cached block that no sequence holds, and every stored prompt's logits; "
           "blocks that sequences hold stay with them but are no longer findable.")
      .def(
          "drain_events",
          [](PagedKvCache& cache) {
            py::list events;
            for (const CacheEvent& e : cache.DrainEvents()) events.append(EventDict(e));
            return events;
          },
          "Prefix-cache events since the last drain, oldest first: dicts with seq_no (+1 per "
          "event), type ('stored' | 'removed' | 'cleared'), hash (32 bytes, the block's "
          "block_hashes() value; empty for 'cleared') and block_id (-1 for 'cleared'). Always "
          "empty unless the config has enable_kv_events=True.")
      .def("stats", [](const PagedKvCache& cache) { return StatsDict(cache.Stats()); },
           "Counters as a dict of ints.")
      .def_property_readonly(
          "memory_pressure",
          [](const PagedKvCache& cache) { return PressureName(cache.MemoryPressure()); },
          "'low' | 'high' | 'critical' by the free-block watermarks of the config.")
      .def(
          "set_pressure_callback",
          [](py::handle self, py::object callback) {
            PagedKvCache& cache = self.cast<PagedKvCache&>();
            if (!callback.is_none() && !PyCallable_Check(callback.ptr())) {
              throw py::type_error("callback must be callable or None, got " +
                                   std::string(py::str(py::type::of(callback).attr("__name__"))));
            }
            cache.SetPressureCallback(callback.is_none()
                                          ? nullptr
                                          : WrapPressureCallback(self, std::move(callback)));
          },
          py::arg("callback"),
          "callback(level: str) runs (with the GIL, outside the cache's lock) whenever a call "
          "changes memory_pressure; None removes it (TypeError for anything else that is not "
          "callable). Exceptions it raises are reported as unraisable, never propagated. A "
          "callback that refers to the cache (a bound method of its owner) does not keep it "
          "alive: the garbage collector sees through it.")
      .def("check_invariants", &PagedKvCache::CheckInvariants,
           py::call_guard<py::gil_scoped_release>(),
           "Validate every internal invariant (ref counts match the tables, cached and "
           "evictable blocks, free + used == total, chain keys); raises InvariantError naming "
           "the first one broken. O(blocks + tokens): for tests.")
      .def("__contains__", &PagedKvCache::Contains, py::arg("seq_id").noconvert(),
           "Whether the cache holds seq_id (resident or swapped out).")
      .def("__len__", &PagedKvCache::NumSequences, "The number of sequences held.");
}

}  // namespace ferrum_kv::bindings
