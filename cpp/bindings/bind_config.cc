#include <pybind11/pybind11.h>

#include <sstream>

#include "bindings.h"
#include "ferrum_kv/config.h"
#include "ferrum_kv/support/check.h"

namespace py = pybind11;

namespace ferrum_kv::bindings {

namespace {

int32_t ToInt32(int64_t value, const char* name) {
  FKV_CHECK_ARG(value >= 0 && value <= kMaxBlocks,
                name << " must be in [0, " << kMaxBlocks << "], got " << value);
  return static_cast<int32_t>(value);
}

std::string Repr(const CacheConfig& c) {
  std::ostringstream out;
  out << "CacheConfig(num_layers=" << c.num_layers << ", num_kv_heads=" << c.num_kv_heads
      << ", head_dim=" << c.head_dim << ", block_size=" << c.block_size
      << ", num_blocks=" << c.num_blocks << ", dtype='" << DTypeName(c.dtype)
      << "', num_host_blocks=" << c.num_host_blocks
      << ", enable_prefix_caching=" << (c.enable_prefix_caching ? "True" : "False")
      << ", enable_kv_events=" << (c.enable_kv_events ? "True" : "False")
      << ", high_watermark=" << c.high_watermark
      << ", critical_watermark=" << c.critical_watermark << ", eviction_policy='"
      << EvictionPolicyName(c.eviction_policy) << "', max_prompt_logits=" << c.max_prompt_logits
      << ")";
  return out.str();
}

}  // namespace

void BindConfig(py::module_& m) {
  py::class_<CacheConfig>(m, "CacheConfig",
                          "Geometry of a paged KV cache (immutable). A block holds block_size "
                          "tokens of K and V for every layer and KV head.")
      .def(py::init([](int64_t num_layers, int64_t num_kv_heads, int64_t head_dim,
                       int64_t block_size, int64_t num_blocks, const py::str& dtype,
                       int64_t num_host_blocks, bool enable_prefix_caching,
                       double high_watermark, double critical_watermark,
                       const py::str& eviction_policy, bool enable_kv_events,
                       int64_t max_prompt_logits) {
             CacheConfig c;
             c.num_layers = ToInt32(num_layers, "num_layers");
             c.num_kv_heads = ToInt32(num_kv_heads, "num_kv_heads");
             c.head_dim = ToInt32(head_dim, "head_dim");
             c.block_size = ToInt32(block_size, "block_size");
             c.num_blocks = ToInt32(num_blocks, "num_blocks");
             c.dtype = ParseDType(dtype);
             c.num_host_blocks = ToInt32(num_host_blocks, "num_host_blocks");
             c.enable_prefix_caching = enable_prefix_caching;
             c.high_watermark = high_watermark;
             c.critical_watermark = critical_watermark;
             c.eviction_policy = ParseEvictionPolicy(eviction_policy);
             c.enable_kv_events = enable_kv_events;
             c.max_prompt_logits = ToInt32(max_prompt_logits, "max_prompt_logits");
             c.Validate();
             return c;
           }),
           py::kw_only(), py::arg("num_layers").noconvert(), py::arg("num_kv_heads").noconvert(), py::arg("head_dim").noconvert(),
           py::arg("block_size").noconvert(), py::arg("num_blocks").noconvert(), py::arg("dtype") = "float32",
           py::arg("num_host_blocks").noconvert() = 0, py::arg("enable_prefix_caching").noconvert() = false,
           py::arg("high_watermark") = 0.10, py::arg("critical_watermark") = 0.02,
           py::arg("eviction_policy") = "lru", py::arg("enable_kv_events").noconvert() = false,
           py::arg("max_prompt_logits").noconvert() = 0,
           "All keyword-only. num_layers, num_kv_heads, head_dim, block_size (tokens per block), "
           "num_blocks (device tier) >= 1; dtype 'float32' | 'float16' | 'bfloat16' | 'int8' | "
           "'fp8_e4m3' (or 'fp8') | 'fp8_e5m2' | 'int4' (quantized: docs/layout.md); "
           "num_host_blocks >= 0 (host tier for swap_out, 0: none); enable_prefix_caching; "
           "watermarks: memory_pressure is 'high' below high_watermark, 'critical' below "
           "critical_watermark (fractions of blocks free or evictable, 0 <= critical <= high <= "
           "1); eviction_policy 'lru' | 'fifo' | 'priority_lru'; enable_kv_events; "
           "max_prompt_logits >= 0. Raises ValueError naming a bad value.")
      .def_readonly("num_layers", &CacheConfig::num_layers, "Transformer layers (int).")
      .def_readonly("num_kv_heads", &CacheConfig::num_kv_heads, "K/V heads per layer (int).")
      .def_readonly("head_dim", &CacheConfig::head_dim, "Elements per head (int).")
      .def_readonly("block_size", &CacheConfig::block_size, "Tokens per block (int).")
      .def_readonly("num_blocks", &CacheConfig::num_blocks, "Blocks of the device tier (int).")
      .def_property_readonly(
          "dtype", [](const CacheConfig& c) { return DTypeName(c.dtype); },
          "Storage dtype: 'float32' | 'float16' | 'bfloat16' | 'int8' | 'fp8_e4m3' | "
          "'fp8_e5m2' | 'int4' ('fp8' is accepted for 'fp8_e4m3').")
      .def_readonly("num_host_blocks", &CacheConfig::num_host_blocks,
                    "Blocks of the host tier (swap_out); 0: none.")
      .def_readonly("enable_prefix_caching", &CacheConfig::enable_prefix_caching,
                    "Whether computed full blocks are reused by later prompts.")
      .def_readonly("enable_kv_events", &CacheConfig::enable_kv_events,
                    "Whether the cache logs prefix-cache events (PagedKvCache.drain_events).")
      .def_readonly("max_prompt_logits", &CacheConfig::max_prompt_logits,
                    "How many prompts' last-token logits the cache keeps for whole-prompt hits "
                    "(PagedKvCache.store_logits / add_sequence_with_logits); 0: off.")
      .def_readonly("high_watermark", &CacheConfig::high_watermark,
                    "memory_pressure is 'high' when fewer than this fraction of blocks are free "
                    "or evictable.")
      .def_readonly("critical_watermark", &CacheConfig::critical_watermark,
                    "memory_pressure is 'critical' below this fraction.")
      .def_property_readonly(
          "eviction_policy",
          [](const CacheConfig& c) { return EvictionPolicyName(c.eviction_policy); },
          "'lru' | 'fifo' | 'priority_lru': the order in which cached blocks are reclaimed.")
      .def_property_readonly("bytes_per_block", &CacheConfig::BytesPerBlock,
                             "Bytes of one block: K and V, all layers.")
      .def_property_readonly(
          "bytes_per_token", &CacheConfig::BytesPerToken,
          "Bytes of one token's K and V over all layers (float): bytes_per_block / "
          "block_size, so quantization parameters and padding included.")
      .def("__repr__", &Repr);
}

}  // namespace ferrum_kv::bindings
