// DLPack producers (torch tensors, JAX / CuPy / NumPy-like arrays: anything with __dlpack__ and
// __dlpack_device__) as NumPy arrays over the same memory, so that every array argument of the
// bindings accepts them zero-copy (numpy_args.h calls this once for all of them).
//
// The consumer side of the Python DLPack protocol: __dlpack_device__ must name the CPU, then
// __dlpack__(max_version=(1, 0)) (or __dlpack__() for a producer that predates versioned capsules)
// gives a capsule, which this code consumes (renames it "used_...") and whose deleter runs when
// the returned array is garbage-collected. The array keeps the producer's dtype, shape and
// strides (validation of them stays with the callers: ValueError for a wrong dtype, shape or
// layout); a tensor flagged read-only gives a non-writeable array; bfloat16 gives a BFloat16Array
// of its uint16 bits. Needs the GIL.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

namespace ferrum_kv::bindings {

// A fast path for torch tensors, the common producer: torch's __dlpack_device__ and __dlpack__
// are Python-level and cost about 6 us per argument, its Tensor.numpy() (the same zero-copy view
// of a CPU tensor's memory) under 1 us (bench/bench_dlpack.py). Recognised by type (a subclass of
// torch.Tensor, looked up in sys.modules: torch is never imported here).
bool IsTorchTensor(pybind11::handle obj);
// The tensor as a NumPy array over its memory: .numpy(), bfloat16 through .view(torch.int16)
// as a BFloat16Array. ValueError (as ArrayFromDLPack) for a tensor not on the CPU; torch's own
// errors (a tensor that requires grad, a dtype NumPy lacks) propagate.
pybind11::array ArrayFromTorch(pybind11::handle tensor, const char* name);

// Whether obj is a DLPack producer other than a numpy.ndarray (which the bindings take as is).
bool IsDLPackProducer(pybind11::handle obj);

// The producer's tensor as a NumPy array sharing its memory. Raises ValueError (naming the
// argument) for a tensor that is not on the CPU, a DLPack major version other than 1, a dtype
// NumPy cannot hold (vector lanes, complex, 8-bit floats, ...) or strides that overflow;
// TypeError when __dlpack__ does not return a DLPack capsule. Errors of the producer's own
// __dlpack__ (torch refuses tensors that require grad) propagate.
pybind11::array ArrayFromDLPack(pybind11::handle producer, const char* name);

}  // namespace ferrum_kv::bindings
