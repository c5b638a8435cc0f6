#include "gguf_writer.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common.h"

namespace kvrt {

namespace {

constexpr uint32_t kTypeU32 = 4, kTypeF32 = 6, kTypeStr = 8, kTypeU64 = 10;
constexpr uint64_t kAlign = 32;

template <class T>
void put(std::string& out, T v) {
    out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

void put_str(std::string& out, const std::string& s) {
    put<uint64_t>(out, s.size());
    out += s;
}

}  // namespace

void gguf_writer::add_u32(const std::string& key, uint32_t v) {
    std::string b;
    put(b, v);
    kv_.push_back({key, kTypeU32, b});
}
void gguf_writer::add_u64(const std::string& key, uint64_t v) {
    std::string b;
    put(b, v);
    kv_.push_back({key, kTypeU64, b});
}
void gguf_writer::add_f32(const std::string& key, float v) {
    std::string b;
    put(b, v);
    kv_.push_back({key, kTypeF32, b});
}
void gguf_writer::add_str(const std::string& key, const std::string& v) {
    std::string b;
    put_str(b, v);
    kv_.push_back({key, kTypeStr, b});
}

void gguf_writer::add_tensor(const std::string& name, std::vector<int64_t> ne,
                             std::vector<float> data) {
    int64_t n = 1;
    for (int64_t d : ne) n *= d;
    if (ne.empty() || ne.size() > 4 || n != (int64_t)data.size())
        throw error("gguf_writer: tensor " + name + " has a shape that does not match its data");
    tensors_.push_back({name, std::move(ne), std::move(data)});
}

void gguf_writer::write(const std::string& path) const {
    std::string head;
    head.append("GGUF", 4);
    put<uint32_t>(head, 3);
    put<uint64_t>(head, tensors_.size());
    put<uint64_t>(head, kv_.size());
    for (const kv& e : kv_) {
        put_str(head, e.key);
        put<uint32_t>(head, e.type);
        head += e.bytes;
    }
    uint64_t offset = 0;
    for (const tensor& t : tensors_) {
        put_str(head, t.name);
        put<uint32_t>(head, (uint32_t)t.ne.size());
        for (int64_t d : t.ne) put<uint64_t>(head, (uint64_t)d);
        put<uint32_t>(head, 0);  // GGML_TYPE_F32
        put<uint64_t>(head, offset);
        offset += (t.data.size() * sizeof(float) + kAlign - 1) / kAlign * kAlign;
    }
    head.resize((head.size() + kAlign - 1) / kAlign * kAlign, '\0');

    const std::string tmp = path + ".tmp";
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) throw error("cannot write '" + tmp + "': " + std::strerror(errno));
    bool ok = std::fwrite(head.data(), 1, head.size(), f) == head.size();
    static const char zeros[kAlign] = {};
    for (const tensor& t : tensors_) {
        const size_t n = t.data.size() * sizeof(float);
        ok = ok && std::fwrite(t.data.data(), 1, n, f) == n;
        const size_t pad = (kAlign - n % kAlign) % kAlign;
        ok = ok && std::fwrite(zeros, 1, pad, f) == pad;
    }
    ok = (std::fclose(f) == 0) && ok;
    if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw error("cannot write '" + path + "'");
    }
}

}  // namespace kvrt
