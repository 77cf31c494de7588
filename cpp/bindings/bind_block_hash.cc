#include <pybind11/pybind11.h>
#include <pybind11/typing.h>

#include <string>
#include <vector>

#include "bindings.h"
#include "ferrum_kv/block_hash.h"
#include "ferrum_kv/support/check.h"
#include "numpy_args.h"

namespace py = pybind11;

namespace ferrum_kv::bindings {

void BindBlockHash(py::module_& m) {
  m.def(
      "block_hashes",
      [](py::handle tokens_obj, int64_t block_size, const py::bytes& ns_bytes) {
        FKV_CHECK_ARG(block_size >= 1 && block_size <= INT32_MAX,
                      "block_size must be in [1, 2**31 - 1], got " << block_size);
        const std::vector<int32_t> tokens = AsInt32Vector(tokens_obj, "tokens");
        const std::string ns = ns_bytes;
        const int64_t num_blocks = tokens.size() / block_size;
        std::vector<BlockHash> hashes(num_blocks);
        {
          // HashBlocks checks the tokens it hashes; the ignored partial block must be valid too.
          const int64_t hashed = num_blocks * block_size;
          py::gil_scoped_release release;
          CheckTokenIds(tokens.data(), hashed, tokens.size());
          const BlockHash root = RootHash(reinterpret_cast<const uint8_t*>(ns.data()), ns.size());
          HashBlocks(root, tokens.data(), num_blocks, int32_t(block_size), hashes.data());
        }
        py::typing::List<py::bytes> result(num_blocks);
        for (int64_t i = 0; i < num_blocks; ++i) {
          result[i] = py::bytes(reinterpret_cast<const char*>(hashes[i].data()), hashes[i].size());
        }
        return result;
      },
      py::arg("tokens"), py::arg("block_size").noconvert(), py::arg("namespace") = py::bytes(""),
      "Prefix hashes of the full blocks of tokens (1-D array of non-negative int32 token ids): "
      "a list of 32-byte digests, one per full block (a partial trailing block is ignored). "
      "parent_0 = SHA-256(b'ferrum-kv/v1' + namespace); block i hashes to "
      "h_i = SHA-256(parent || its token ids as little-endian uint32), and parent = h_i. "
      "ValueError for a negative token, a non-integer array or block_size < 1; TypeError when "
      "namespace is not bytes.");
  m.def("sha256_impl", &Sha256Implementation,
        "Which SHA-256 implementation this process runs: 'sha-ni' or 'portable'.");
}

}  // namespace ferrum_kv::bindings
