// A minimal GGUF v3 writer: scalar and string metadata plus F32 tensors,
// written to `<path>.tmp` and renamed over `path` only once complete, so a
// failure never leaves a half-written file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvrt {

class gguf_writer {
public:
    void add_u32(const std::string& key, uint32_t v);
    void add_u64(const std::string& key, uint64_t v);
    void add_f32(const std::string& key, float v);
    void add_str(const std::string& key, const std::string& v);
    // ne[0] is the contiguous dimension, as in GGUF.
    void add_tensor(const std::string& name, std::vector<int64_t> ne, std::vector<float> data);
    // Throws kvrt::error naming the path when it cannot write.
    void write(const std::string& path) const;

private:
    struct kv {
        std::string key;
        uint32_t type;
        std::string bytes;  // the encoded value
    };
    struct tensor {
        std::string name;
        std::vector<int64_t> ne;
        std::vector<float> data;
    };
    std::vector<kv> kv_;
    std::vector<tensor> tensors_;
};

}  // namespace kvrt
