// The exceptions the library throws. The bindings map each to a Python type:
//   InvalidArgument  -> ValueError        (bad value, shape, dtype; double free)
//   IndexOutOfRange  -> IndexError        (block id, layer, offset out of range)
//   UnknownSequence  -> KeyError          (a seq_id the cache does not hold)
//   Error            -> ferrum_kv.Error   (domain errors; subclasses RuntimeError)
//   OutOfBlocksError -> ferrum_kv.OutOfBlocksError (capacity; an expected outcome)
//   InvalidStateError -> ferrum_kv.InvalidStateError (not valid in the current state, e.g. an
//                        append to a swapped-out sequence)
//   InvariantError   -> ferrum_kv.InvariantError   (a CheckInvariants() validator failed: a bug)
//   OutOfMemory      -> MemoryError       (an arena larger than the memory available)
// Every throwing operation leaves the object's state exactly as it was before the call.
#pragma once

#include <stdexcept>
#include <string>

namespace ferrum_kv {

class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

class IndexOutOfRange : public std::out_of_range {
 public:
  using std::out_of_range::out_of_range;
};

class UnknownSequence : public std::out_of_range {
 public:
  using std::out_of_range::out_of_range;
};

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class OutOfBlocksError : public Error {
 public:
  using Error::Error;
};

class InvalidStateError : public Error {
 public:
  using Error::Error;
};

class InvariantError : public Error {
 public:
  using Error::Error;
};

class OutOfMemory : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace ferrum_kv
