// GGUF reader.
//
// File format (v2 and v3, little-endian):
//   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv x { string key | u32 value_type | value }
//   n_tensors x { string name | u32 n_dims | n_dims x u64 ne | u32 ggml_type | u64 offset }
//   padding to `general.alignment` (default 32)
//   tensor data; each tensor at data_start + offset, offset a multiple of the alignment
// string = u64 length + bytes (no terminator); array = u32 elem_type + u64 count + elems.
//
// The file is memory-mapped and every count, length, dimension, type and offset is
// validated against the file size with overflow-checked arithmetic before use; checks
// are live in release builds. A malformed file throws kvrt::error with one line naming
// the field and the problem.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "common.h"
#include "ggml_types.h"

namespace kvrt {

enum gguf_vtype : uint32_t {
    GGUF_VTYPE_UINT8 = 0,
    GGUF_VTYPE_INT8 = 1,
    GGUF_VTYPE_UINT16 = 2,
    GGUF_VTYPE_INT16 = 3,
    GGUF_VTYPE_UINT32 = 4,
    GGUF_VTYPE_INT32 = 5,
    GGUF_VTYPE_FLOAT32 = 6,
    GGUF_VTYPE_BOOL = 7,
    GGUF_VTYPE_STRING = 8,
    GGUF_VTYPE_ARRAY = 9,
    GGUF_VTYPE_UINT64 = 10,
    GGUF_VTYPE_INT64 = 11,
    GGUF_VTYPE_FLOAT64 = 12,
};

const char* gguf_vtype_name(gguf_vtype t);

// One metadata value. Scalars are held in the widest field of their kind;
// arrays hold their elements (possibly arrays themselves).
struct gguf_value {
    gguf_vtype type = GGUF_VTYPE_UINT8;
    uint64_t u = 0;   // unsigned ints, bool
    int64_t i = 0;    // signed ints
    double f = 0.0;   // floats
    std::string s;    // string
    gguf_vtype elem_type = GGUF_VTYPE_UINT8;  // arrays
    std::vector<gguf_value> arr;              // arrays
};

struct gguf_tensor {
    std::string name;
    uint32_t n_dims = 0;
    int64_t ne[4] = {1, 1, 1, 1};  // ne[0] is the contiguous (row) dimension
    ggml_type type = GGML_TYPE_F32;
    uint64_t offset = 0;           // relative to the data section
    const uint8_t* data = nullptr; // into the mapping
    uint64_t nbytes = 0;
    int64_t nelements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
    int64_t nrows() const { return ne[1] * ne[2] * ne[3]; }
};

class gguf_file {
public:
    // Maps and validates `path`. Throws kvrt::error.
    static std::unique_ptr<gguf_file> open(const std::string& path);
    // Validates an in-memory image (fuzzing, tests); `data` must outlive the
    // object, which points into it. `name` stands for the path in messages.
    static std::unique_ptr<gguf_file> open_memory(const void* data, size_t size,
                                                  const std::string& name);
    ~gguf_file();
    gguf_file(const gguf_file&) = delete;
    gguf_file& operator=(const gguf_file&) = delete;

    uint32_t version() const { return version_; }
    uint64_t alignment() const { return alignment_; }
    const std::string& path() const { return path_; }
    uint64_t file_size() const { return size_; }

    // Metadata, in file order.
    const std::vector<std::pair<std::string, gguf_value>>& kv() const { return kv_; }
    const gguf_value* find(const std::string& key) const;  // nullptr if absent

    // Typed getters. The *_or forms return `dflt` when the key is absent;
    // all throw kvrt::error naming the key when it is present with a type that
    // does not convert (any integer type converts to any other integer type if
    // the value fits; float32/float64 convert to float).
    uint64_t get_uint(const std::string& key) const;
    uint64_t get_uint_or(const std::string& key, uint64_t dflt) const;
    int64_t get_int_or(const std::string& key, int64_t dflt) const;
    double get_float(const std::string& key) const;
    double get_float_or(const std::string& key, double dflt) const;
    bool get_bool_or(const std::string& key, bool dflt) const;
    std::string get_str(const std::string& key) const;
    std::string get_str_or(const std::string& key, const std::string& dflt) const;
    // Array getters: throw when absent or when the element type does not match.
    const std::vector<gguf_value>& get_arr(const std::string& key, gguf_vtype elem) const;

    const std::vector<gguf_tensor>& tensors() const { return tensors_; }
    const gguf_tensor* tensor(const std::string& name) const;  // nullptr if absent

private:
    gguf_file() = default;
    std::string path_;
    const uint8_t* map_ = nullptr;
    uint64_t size_ = 0;
    bool owns_map_ = false;  // false for open_memory
    uint32_t version_ = 0;
    uint64_t alignment_ = 32;
    std::vector<std::pair<std::string, gguf_value>> kv_;
    std::unordered_map<std::string, size_t> kv_index_;
    std::vector<gguf_tensor> tensors_;
    std::unordered_map<std::string, size_t> tensor_index_;
    friend struct gguf_parser;
};

// Human-readable rendering of a value (arrays abbreviated), for `inspect`.
std::string gguf_value_to_string(const gguf_value& v, size_t max_items = 8);

}  // namespace kvrt
