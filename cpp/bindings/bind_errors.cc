#include <pybind11/pybind11.h>

#include "bindings.h"
#include "ferrum_kv/errors.h"

namespace py = pybind11;

namespace ferrum_kv::bindings {

void BindErrors(py::module_& m) {
  // pybind11 tries the most recently registered translator first: bases before subclasses.
  // InvalidArgument and IndexOutOfRange reach Python through pybind11's built-in mapping of
  // std::invalid_argument (ValueError) and std::out_of_range (IndexError).
  auto& error = py::register_exception<Error>(m, "Error", PyExc_RuntimeError);
  auto& out_of_blocks = py::register_exception<OutOfBlocksError>(m, "OutOfBlocksError", error);
  auto& invalid_state =
      py::register_exception<InvalidStateError>(m, "InvalidStateError", error);
  auto& invariant = py::register_exception<InvariantError>(m, "InvariantError", error);
  error.attr("__doc__") = "Base class of ferrum-kv's domain errors (a RuntimeError).";
  out_of_blocks.attr("__doc__") = "Not enough free blocks; the call changed nothing.";
  invalid_state.attr("__doc__") =
      "The operation is not valid in the sequence's current state (e.g. swapped out).";
  invariant.attr("__doc__") = "An internal invariant is broken (a bug in ferrum-kv).";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const UnknownSequence& e) {
      PyErr_SetString(PyExc_KeyError, e.what());
    } catch (const OutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });
}

}  // namespace ferrum_kv::bindings
