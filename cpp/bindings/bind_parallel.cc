#include <pybind11/pybind11.h>

#include "bindings.h"
#include "ferrum_kv/parallel.h"

namespace py = pybind11;

namespace ferrum_kv::bindings {

void BindParallel(py::module_& m) {
  m.def("get_num_threads", &DefaultNumThreads,
        "The thread count that num_threads=0 means in the attention kernels and "
        "memory_read_probe: the CPUs this process may run on (its affinity mask, at most 1024) "
        "unless set_num_threads changed it.");
  m.def("set_num_threads", &SetDefaultNumThreads, py::arg("num_threads").noconvert(),
        "Set the thread count that num_threads=0 means, for the whole process (int in "
        "[1, 1024]; ValueError otherwise).");
}

}  // namespace ferrum_kv::bindings
