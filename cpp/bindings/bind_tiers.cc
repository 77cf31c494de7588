// The C++ side of the storage tiers (docs/tiers.md) for ferrum_kv.tiers: TierCodec, and the tier
// writer's and reader's private methods on PagedKvCache (copy-out of queued blocks, and
// add_sequence with blocks loaded from a tier). The clients themselves are Python.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "bindings.h"
#include "ferrum_kv/block_hash.h"
#include "ferrum_kv/cache_manager.h"
#include "ferrum_kv/support/check.h"
#include "ferrum_kv/tier_codec.h"
#include "numpy_args.h"

namespace py = pybind11;

namespace ferrum_kv::bindings {

namespace {

BlockHash HashArgument(const py::bytes& hash) {
  const std::string s = hash;
  FKV_CHECK_ARG(s.size() == 32, "a block hash has 32 bytes, got " << s.size());
  BlockHash h;
  std::memcpy(h.data(), s.data(), 32);
  return h;
}

// A bytes object's contents (immutable: safe to read without the GIL while a reference is held).
std::pair<const uint8_t*, int64_t> BytesData(py::handle value, const char* name) {
  if (!PyBytes_Check(value.ptr())) {
    throw py::type_error(std::string(name) + " must be bytes, got " +
                         std::string(py::str(py::type::of(value).attr("__name__"))));
  }
  return {reinterpret_cast<const uint8_t*>(PyBytes_AS_STRING(value.ptr())),
          int64_t(PyBytes_GET_SIZE(value.ptr()))};
}

// A read-only, contiguous buffer (bytes, bytearray, memoryview, mmap, ...) held from Hold until
// destruction; destroy with the GIL held.
struct HeldBuffer {
  const uint8_t* data = nullptr;
  int64_t len = 0;
  Py_buffer view{};
  bool held = false;

  HeldBuffer() = default;
  HeldBuffer(const HeldBuffer&) = delete;
  HeldBuffer& operator=(const HeldBuffer&) = delete;
  ~HeldBuffer() {
    if (held) PyBuffer_Release(&view);
  }
  void Hold(py::handle object, const char* name) {
    if (PyObject_GetBuffer(object.ptr(), &view, PyBUF_SIMPLE) != 0) {
      PyErr_Clear();
      throw py::type_error(std::string(name) + " must be a contiguous bytes-like object, got " +
                           std::string(py::str(py::type::of(object).attr("__name__"))));
    }
    held = true;
    data = static_cast<const uint8_t*>(view.buf);
    len = int64_t(view.len);
  }
};

// Copies out up to max_blocks queued blocks, sealed with codec: (hashes uint8 [k, 32], values
// uint8 [k, value_bytes]). The blocks are unpinned however the call ends.
py::tuple TierExport(PagedKvCache& cache, const TierCodec& codec, int64_t max_blocks) {
  FKV_CHECK_ARG(max_blocks >= 0, "max_blocks must be >= 0, got " << max_blocks);
  FKV_CHECK_ARG(codec.payload_bytes() == cache.storage()->bytes_per_block(),
                "the codec's payload_bytes " << codec.payload_bytes() << " is not the cache's "
                                             << "bytes_per_block "
                                             << cache.storage()->bytes_per_block());
  std::vector<BlockId> blocks(static_cast<size_t>(max_blocks));
  std::vector<BlockHash> hashes(static_cast<size_t>(max_blocks));
  const int64_t k = cache.TakeExports(max_blocks, blocks.data(), hashes.data());
  // The taken blocks stay pinned until FinishExports, which runs however this call ends.
  py::array_t<uint8_t> hash_array;
  py::array_t<uint8_t> values;
  try {
    hash_array = py::array_t<uint8_t>({py::ssize_t(k), py::ssize_t(32)});
    values = py::array_t<uint8_t>({py::ssize_t(k), py::ssize_t(codec.value_bytes())});
  } catch (...) {
    py::gil_scoped_release release;
    cache.FinishExports(blocks.data(), k);
    throw;
  }
  uint8_t* out = values.mutable_data();
  uint8_t* hash_out = hash_array.mutable_data();
  {
    py::gil_scoped_release release;
    const KvStorage& storage = *cache.storage();
    const size_t payload = size_t(codec.payload_bytes());
    for (int64_t i = 0; i < k; ++i) {
      uint8_t* value = out + i * codec.value_bytes();
      std::memcpy(value + kTierHeaderBytes, storage.BlockData(blocks[size_t(i)]), payload);
      codec.Seal(hashes[size_t(i)], value);
      std::memcpy(hash_out + 32 * i, hashes[size_t(i)].data(), 32);
    }
    cache.FinishExports(blocks.data(), k);  // no exception: Mutate's callback is ours to run
  }
  return py::make_tuple(hash_array, values);
}

}  // namespace

void BindTiers(py::module_& m) {
  py::class_<TierCodec>(m, "TierCodec",
                        "The tier value format (docs/tiers.md): a 128-byte header (magic, format "
                        "version, flags, fingerprint, block hash, payload length, XXH64 of the "
                        "payload, optional HMAC-SHA256) and the block's bytes. Immutable; "
                        "thread-safe.")
      .def(py::init([](const py::bytes& fingerprint, int64_t payload_bytes,
                       const py::bytes& secret) {
             return TierCodec(std::string(fingerprint), payload_bytes, std::string(secret));
           }),
           py::arg("fingerprint"), py::arg("payload_bytes"), py::kw_only(),
           py::arg("secret") = py::bytes(),
           "fingerprint: 16 bytes; payload_bytes: a block's bytes (>= 1); secret: bytes, empty "
           "for no MAC. ValueError otherwise.")
      .def_property_readonly("payload_bytes", &TierCodec::payload_bytes)
      .def_property_readonly("value_bytes", &TierCodec::value_bytes,
                             "header_bytes + payload_bytes.")
      .def_property_readonly_static("header_bytes",
                                    [](py::handle) { return kTierHeaderBytes; })
      .def_property_readonly("fingerprint", [](const TierCodec& c) { return py::bytes(c.fingerprint()); })
      .def_property_readonly("authenticates", &TierCodec::authenticates,
                             "Whether values carry (and must carry) a MAC.")
      .def(
          "seal",
          [](const TierCodec& codec, const py::bytes& hash, const py::bytes& payload) {
            const BlockHash h = HashArgument(hash);
            const auto [data, len] = BytesData(payload, "payload");
            FKV_CHECK_ARG(len == codec.payload_bytes(), "payload has " << len << " bytes, the "
                                                        << "codec " << codec.payload_bytes());
            std::string value(size_t(codec.value_bytes()), '\0');
            auto* v = reinterpret_cast<uint8_t*>(value.data());
            std::memcpy(v + kTierHeaderBytes, data, size_t(len));
            codec.Seal(h, v);
            return py::bytes(value);
          },
          py::arg("hash"), py::arg("payload"),
          "The value of the block named hash (32 bytes) holding payload (bytes).")
      .def(
          "open",
          [](const TierCodec& codec, const py::bytes& hash, py::handle value) {
            const BlockHash h = HashArgument(hash);
            const auto [data, len] = BytesData(value, "value");
            return std::string(TierValueStatusName(codec.Open(h, data, len)));
          },
          py::arg("hash"), py::arg("value"),
          "Check value (bytes) as the block named hash: 'ok', or why not: 'malformed' | "
          "'foreign' | 'wrong_block' | 'bad_checksum' | 'unauthenticated'.")
      .def(
          "seal_rows",
          [](const TierCodec& codec, const py::array_t<uint8_t>& hashes, py::array_t<uint8_t>& values) {
            const int64_t k = hashes.ndim() == 2 ? hashes.shape(0) : -1;
            FKV_CHECK_ARG(k >= 0 && hashes.shape(1) == 32 &&
                              (hashes.flags() & py::array::c_style),
                          "hashes must be a C-contiguous uint8 array [k, 32]");
            FKV_CHECK_ARG(values.ndim() == 2 && values.shape(0) == k &&
                              values.shape(1) == codec.value_bytes() &&
                              (values.flags() & py::array::c_style) && values.writeable(),
                          "values must be a writable C-contiguous uint8 array [" << k << ", "
                                                                                 << codec.value_bytes() << "]");
            const uint8_t* h = hashes.data();
            uint8_t* v = values.mutable_data();
            py::gil_scoped_release release;
            for (int64_t i = 0; i < k; ++i) {
              BlockHash hash;
              std::memcpy(hash.data(), h + 32 * i, 32);
              codec.Seal(hash, v + i * codec.value_bytes());
            }
          },
          py::arg("hashes").noconvert(), py::arg("values").noconvert(),
          "Seal, in place, values [k, value_bytes] (uint8, payload after the header) as the "
          "blocks named hashes [k, 32] (uint8): for ferrum_kv.tiers.");

  auto cache = py::reinterpret_borrow<py::class_<PagedKvCache>>(m.attr("PagedKvCache"));
  cache.def(
      "_tier_export", &TierExport, py::arg("codec"), py::arg("max_blocks"),
      "For ferrum_kv.tiers: copies out up to max_blocks blocks of the tier write queue, sealed "
      "with codec, and unpins them: (hashes uint8 [k, 32], values uint8 [k, value_bytes]).");
  cache.def(
      "_import_from_tiers",
      [](PagedKvCache& cache, py::handle tokens_obj, const py::bytes& namespace_id,
         int64_t first_block, const py::list& values, const py::list& codecs) -> py::tuple {
        const std::vector<int32_t> tokens = AsInt32Vector(tokens_obj, "tokens");
        const std::string ns = namespace_id;
        const int64_t k = int64_t(py::len(values));
        FKV_CHECK_ARG(int64_t(py::len(codecs)) == k,
                      "values and codecs differ in length: " << k << " vs " << py::len(codecs));
        FKV_CHECK_ARG(first_block >= 0, "first_block must be >= 0, got " << first_block);
        const int32_t block_size = cache.config().block_size;
        FKV_CHECK_ARG((first_block + k) * block_size <= int64_t(tokens.size()),
                      "blocks [" << first_block << ", " << first_block + k << ") are not all "
                                 << "full blocks of " << tokens.size() << " tokens");
        // Each value's bytes, held (buffer protocol) for the call; its header is copied and
        // checked here, its payload as ImportBlocks copies it into the arena, so
        // a value that changes meanwhile (a buffer the caller reuses, a file rewritten in place)
        // is never checked in one state and loaded in another.
        std::vector<HeldBuffer> data(static_cast<size_t>(k));
        std::vector<std::array<uint8_t, kTierHeaderBytes>> headers(static_cast<size_t>(k));
        std::vector<const TierCodec*> codec_of;
        for (int64_t i = 0; i < k; ++i) {
          data[size_t(i)].Hold(values[size_t(i)], "values[i]");
          codec_of.push_back(&codecs[size_t(i)].cast<const TierCodec&>());
          FKV_CHECK_ARG(codec_of.back()->payload_bytes() == cache.storage()->bytes_per_block(),
                        "codecs[" << i << "] is not for this cache's bytes_per_block");
        }
        std::vector<TierValueStatus> statuses;
        int64_t imported;
        {
          py::gil_scoped_release release;
          // The leading run of values whose headers open as the blocks the tokens name.
          CheckTokenIds(tokens.data(), 0, int64_t(tokens.size()));
          std::vector<BlockHash> hashes(static_cast<size_t>(first_block + k));
          HashBlocks(RootHash(reinterpret_cast<const uint8_t*>(ns.data()), ns.size()),
                     tokens.data(), first_block + k, block_size, hashes.data());
          std::vector<const uint8_t*> payloads;
          for (int64_t i = 0; i < k; ++i) {
            const HeldBuffer& value = data[size_t(i)];
            std::memcpy(headers[size_t(i)].data(), value.data,
                        size_t(std::min<int64_t>(value.len, kTierHeaderBytes)));
            statuses.push_back(codec_of[size_t(i)]->OpenHeader(
                hashes[size_t(first_block + i)], headers[size_t(i)].data(), value.len));
            if (statuses.back() != TierValueStatus::kOk) break;
            payloads.push_back(value.data + kTierHeaderBytes);
          }
          BlockImport import;
          import.first_block = first_block;
          import.num_blocks = int64_t(payloads.size());
          import.payloads = payloads.data();
          std::vector<TierValueStatus> copied(payloads.size(), TierValueStatus::kOk);
          import.copy = [&](int64_t i, uint8_t* block) {  // concurrently, for distinct i
            copied[size_t(i)] = codec_of[size_t(i)]->CopyPayload(headers[size_t(i)].data(),
                                                                 payloads[size_t(i)], block);
            return copied[size_t(i)] == TierValueStatus::kOk;
          };
          imported = cache.ImportBlocks(tokens.data(), int64_t(tokens.size()), ns, import);
          // The first payload that failed (if any) stopped the run: it is the last status.
          for (size_t i = 0; i < copied.size(); ++i) {
            if (copied[i] != TierValueStatus::kOk) {
              statuses.resize(i + 1);
              statuses.back() = copied[i];
              break;
            }
          }
        }
        py::list names;
        for (TierValueStatus s : statuses) names.append(TierValueStatusName(s));
        return py::make_tuple(imported, names);
      },
      py::arg("tokens"), py::arg("namespace"), py::arg("first_block"), py::arg("values"),
      py::arg("codecs"),
      "For ferrum_kv.tiers: values[i] (a bytes-like object, opened with codecs[i]) as the K/V of full block "
      "first_block + i of tokens. Headers are checked in order up to the first that fails, each "
      "payload where it was copied into the arena; the good leading run is published where the device lookup stops (ImportBlocks), for "
      "add_sequence to find. Returns (blocks published, statuses of the checked values).");
}

}  // namespace ferrum_kv::bindings
