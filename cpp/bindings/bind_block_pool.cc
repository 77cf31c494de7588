#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>

#include "bindings.h"
#include "ferrum_kv/block_pool.h"
#include "ferrum_kv/support/check.h"
#include "numpy_args.h"

namespace py = pybind11;

namespace ferrum_kv::bindings {

void BindBlockPool(py::module_& m) {
  py::class_<BlockPool>(m, "BlockPool",
                        "Fixed set of block ids [0, num_blocks) with a ref count each. "
                        "Thread-safe; every call is all-or-nothing. The least recently freed "
                        "block is reused first.")
      .def(py::init<int64_t>(), py::kw_only(), py::arg("num_blocks").noconvert(),
           "A pool of num_blocks (>= 1) free blocks; ValueError otherwise.")
      .def(
          "allocate",
          [](BlockPool& pool, int64_t n) {
            FKV_CHECK_ARG(n >= 0, "block count must be >= 0, got " << n);
            // n > num_blocks always fails inside Allocate (before it writes to the output), so
            // the array never needs more than num_blocks entries.
            py::array_t<int32_t> ids(std::min(n, pool.num_blocks()));
            int32_t* out = ids.mutable_data();
            {
              py::gil_scoped_release release;
              pool.Allocate(n, out);
            }
            return ids;
          },
          py::arg("n").noconvert(),
          "Allocate n blocks (ref count 1). Returns int32 array of shape (n,). Raises "
          "OutOfBlocksError (nothing allocated) when fewer than n are free.")
      .def(
          "free",
          [](BlockPool& pool, py::handle ids_obj) {
            const std::vector<int32_t> ids = AsInt32Vector(ids_obj, "ids");
            const int32_t* data = ids.data();
            const int64_t n = ids.size();
            py::gil_scoped_release release;
            pool.Free(data, n);
          },
          py::arg("ids"),
          "Drop one reference from each id (1-D integer array); a block returns to the free "
          "list at ref count 0. The whole batch is validated first: IndexError for an id out of "
          "range, ValueError for a double free; nothing changes on error.")
      .def(
          "incref",
          [](BlockPool& pool, py::handle ids_obj) {
            const std::vector<int32_t> ids = AsInt32Vector(ids_obj, "ids");
            const int32_t* data = ids.data();
            const int64_t n = ids.size();
            py::gil_scoped_release release;
            pool.IncRef(data, n);
          },
          py::arg("ids"),
          "Add one reference to each id (all must be allocated; ValueError otherwise, nothing "
          "changed).")
      .def("ref_count", &BlockPool::RefCount, py::arg("block_id").noconvert(),
           "The block's ref count (0: free). Raises IndexError for an id outside "
           "[0, num_blocks).")
      .def("can_allocate", &BlockPool::CanAllocate, py::arg("n").noconvert(),
           "Whether allocate(n) would succeed now. Raises ValueError for n < 0.")
      .def_property_readonly("num_blocks", &BlockPool::num_blocks, "Blocks in the pool.")
      .def_property_readonly("num_free_blocks", &BlockPool::num_free_blocks,
                             "Blocks with ref count 0.")
      .def_property_readonly("num_used_blocks", &BlockPool::num_used_blocks,
                             "Blocks with ref count >= 1.")
      .def("stats",
           [](const BlockPool& pool) {
             const BlockPool::Stats s = pool.stats();
             py::dict d;
             d["num_blocks"] = s.num_blocks;
             d["num_free_blocks"] = s.num_free_blocks;
             d["num_used_blocks"] = s.num_blocks - s.num_free_blocks;
             d["blocks_allocated"] = s.blocks_allocated;
             d["blocks_freed"] = s.blocks_freed;
             d["allocation_failures"] = s.allocation_failures;
             return d;
           },
           "Counters over the pool's life, as a dict of ints.")
      .def("check_invariants", &BlockPool::CheckInvariants,
           py::call_guard<py::gil_scoped_release>(),
           "Raise InvariantError if an internal invariant is broken.")
      .def("__len__", &BlockPool::num_blocks, "num_blocks.")
      .def("__repr__", [](const BlockPool& pool) {
        return "BlockPool(num_blocks=" + std::to_string(pool.num_blocks()) +
               ", num_free_blocks=" + std::to_string(pool.num_free_blocks()) + ")";
      });
}

}  // namespace ferrum_kv::bindings
