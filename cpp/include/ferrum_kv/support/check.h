// Argument and invariant checks that throw the typed errors of errors.h with the actual values in
// the message. Usage: FKV_CHECK_ARG(n >= 0, "count must be >= 0, got " << n);
#pragma once

#include <sstream>

#include "ferrum_kv/errors.h"

#define FKV_THROW(ExceptionType, message_stream)   \
  do {                                             \
    std::ostringstream fkv_message_;               \
    fkv_message_ << message_stream;                \
    throw ExceptionType(fkv_message_.str());       \
  } while (false)

// Caller mistakes: a bad value (ValueError in Python) or an index out of range (IndexError).
#define FKV_CHECK_ARG(condition, message_stream) \
  do {                                           \
    if (!(condition)) FKV_THROW(::ferrum_kv::InvalidArgument, message_stream); \
  } while (false)
#define FKV_CHECK_INDEX(condition, message_stream) \
  do {                                             \
    if (!(condition)) FKV_THROW(::ferrum_kv::IndexOutOfRange, message_stream); \
  } while (false)

// Broken internal invariants (bugs), reported by the CheckInvariants() validators.
#define FKV_CHECK_INVARIANT(condition, message_stream)                                   \
  do {                                                                                   \
    if (!(condition))                                                                    \
      FKV_THROW(::ferrum_kv::InvariantError,                                             \
                "invariant violated: " #condition " (" << message_stream << ")");        \
  } while (false)
