// Shared basics: the error type every engine failure is reported with.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace kvrt {

// One-line, user-facing error. Thrown for bad input (files, arguments) and
// engine failures; the CLI prints what() and exits non-zero, Python sees
// RuntimeError (nanobind's translation of std::runtime_error).
struct error : std::runtime_error {
    explicit error(const std::string& msg) : std::runtime_error(msg) {}
};

// Overflow-checked arithmetic for untrusted sizes. Return false on overflow.
inline bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
    return !__builtin_mul_overflow(a, b, out);
}
inline bool checked_add(uint64_t a, uint64_t b, uint64_t* out) {
    return !__builtin_add_overflow(a, b, out);
}

}  // namespace kvrt
