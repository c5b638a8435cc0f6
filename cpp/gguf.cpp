#include "gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

namespace kvrt {

const char* gguf_vtype_name(gguf_vtype t) {
    static const char* names[] = {"uint8",  "int8",   "uint16", "int16", "uint32",
                                  "int32",  "float32", "bool",  "string", "array",
                                  "uint64", "int64",  "float64"};
    return (uint32_t)t < sizeof(names) / sizeof(names[0]) ? names[t] : "invalid";
}

// Sequential reader over the mapping; every read is bounds-checked and a
// failure names the field being read.
struct gguf_parser {
    const uint8_t* base;
    uint64_t size;
    uint64_t pos = 0;
    std::string file;  // for messages

    [[noreturn]] void fail(const std::string& what) const {
        throw error("gguf: " + file + ": " + what);
    }

    uint64_t remaining() const { return size - pos; }

    void read_bytes(void* dst, uint64_t n, const std::string& field) {
        if (n > remaining())
            fail(field + " extends past the end of the file (offset " + std::to_string(pos) +
                 ", " + std::to_string(n) + " bytes, file size " + std::to_string(size) + ")");
        std::memcpy(dst, base + pos, n);
        pos += n;
    }

    template <class T>
    T read(const std::string& field) {
        T v;
        read_bytes(&v, sizeof v, field);
        return v;
    }

    std::string read_string(const std::string& field) {
        const uint64_t len = read<uint64_t>(field + " length");
        if (len > remaining())
            fail(field + ": string length " + std::to_string(len) + " is past the end of the file");
        std::string s(reinterpret_cast<const char*>(base + pos), len);
        pos += len;
        return s;
    }

    // Minimum bytes one element of type t occupies in the file, to bound
    // counts before reserving memory for them.
    static uint64_t min_elem_size(gguf_vtype t) {
        switch (t) {
            case GGUF_VTYPE_UINT8: case GGUF_VTYPE_INT8: case GGUF_VTYPE_BOOL: return 1;
            case GGUF_VTYPE_UINT16: case GGUF_VTYPE_INT16: return 2;
            case GGUF_VTYPE_UINT32: case GGUF_VTYPE_INT32: case GGUF_VTYPE_FLOAT32: return 4;
            case GGUF_VTYPE_UINT64: case GGUF_VTYPE_INT64: case GGUF_VTYPE_FLOAT64: return 8;
            case GGUF_VTYPE_STRING: return 8;
            case GGUF_VTYPE_ARRAY: return 12;
        }
        return 1;
    }

    gguf_vtype read_vtype(const std::string& field) {
        const uint32_t t = read<uint32_t>(field + " type");
        if (t > GGUF_VTYPE_FLOAT64) fail(field + ": invalid value type " + std::to_string(t));
        return static_cast<gguf_vtype>(t);
    }

    void read_value(gguf_value& v, gguf_vtype t, const std::string& field, int depth) {
        v.type = t;
        switch (t) {
            case GGUF_VTYPE_UINT8: v.u = read<uint8_t>(field); break;
            case GGUF_VTYPE_INT8: v.i = read<int8_t>(field); break;
            case GGUF_VTYPE_UINT16: v.u = read<uint16_t>(field); break;
            case GGUF_VTYPE_INT16: v.i = read<int16_t>(field); break;
            case GGUF_VTYPE_UINT32: v.u = read<uint32_t>(field); break;
            case GGUF_VTYPE_INT32: v.i = read<int32_t>(field); break;
            case GGUF_VTYPE_UINT64: v.u = read<uint64_t>(field); break;
            case GGUF_VTYPE_INT64: v.i = read<int64_t>(field); break;
            case GGUF_VTYPE_FLOAT32: v.f = read<float>(field); break;
            case GGUF_VTYPE_FLOAT64: v.f = read<double>(field); break;
            case GGUF_VTYPE_BOOL: {
                const uint8_t b = read<uint8_t>(field);
                if (b > 1) fail(field + ": bool value " + std::to_string(b) + " is not 0 or 1");
                v.u = b;
                break;
            }
            case GGUF_VTYPE_STRING: v.s = read_string(field); break;
            case GGUF_VTYPE_ARRAY: {
                if (depth > 8) fail(field + ": arrays nested too deeply");
                v.elem_type = read_vtype(field + " element");
                const uint64_t n = read<uint64_t>(field + " array length");
                if (n > remaining() / min_elem_size(v.elem_type))
                    fail(field + ": array length " + std::to_string(n) +
                         " is past the end of the file");
                v.arr.resize(n);
                for (uint64_t i = 0; i < n; ++i) read_value(v.arr[i], v.elem_type, field, depth + 1);
                break;
            }
        }
    }
};

namespace {

struct file_map {
    int fd = -1;
    void* addr = nullptr;
    uint64_t size = 0;
};

bool is_pow2(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

const char* kSpecialTokenKeys[] = {
    "tokenizer.ggml.bos_token_id",       "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",   "tokenizer.ggml.separator_token_id",
    "tokenizer.ggml.padding_token_id",   "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.eom_token_id",       "tokenizer.ggml.mask_token_id",
};

}  // namespace

std::unique_ptr<gguf_file> gguf_file::open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw error("gguf: cannot open '" + path + "': " + std::strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        throw error("gguf: '" + path + "' is not a regular file");
    }
    std::unique_ptr<gguf_file> f(new gguf_file());
    f->path_ = path;
    f->size_ = (uint64_t)st.st_size;
    if (f->size_ > 0) {
        void* addr = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
        if (addr == MAP_FAILED) {
            ::close(fd);
            throw error("gguf: cannot map '" + path + "': " + std::strerror(errno));
        }
        f->map_ = static_cast<const uint8_t*>(addr);
    }
    ::close(fd);

    gguf_parser p{f->map_, f->size_, 0, path};
    char magic[4];
    if (f->size_ < 4) p.fail("file too short for a GGUF header (" + std::to_string(f->size_) + " bytes)");
    p.read_bytes(magic, 4, "magic");
    if (std::memcmp(magic, "GGUF", 4) != 0) p.fail("bad magic (not a GGUF file)");
    f->version_ = p.read<uint32_t>("version");
    if (f->version_ == 1) p.fail("GGUF version 1 is not supported (only versions 2 and 3)");
    if (f->version_ != 2 && f->version_ != 3)
        p.fail("bad version " + std::to_string(f->version_) + " (supported: 2, 3)");
    const uint64_t n_tensors = p.read<uint64_t>("tensor count");
    const uint64_t n_kv = p.read<uint64_t>("key-value count");
    // A key needs at least a length (8) and a type (4); a tensor info at least
    // a name length (8), n_dims (4), one dim (8), type (4) and offset (8).
    if (n_kv > p.remaining() / 12)
        p.fail("key-value count " + std::to_string(n_kv) + " is too large for the file size");
    if (n_tensors > p.remaining() / 32)
        p.fail("tensor count " + std::to_string(n_tensors) + " is too large for the file size");

    f->kv_.reserve(n_kv);
    for (uint64_t i = 0; i < n_kv; ++i) {
        std::string key = p.read_string("key " + std::to_string(i));
        if (key.empty()) p.fail("key " + std::to_string(i) + " is empty");
        if (f->kv_index_.count(key)) p.fail("duplicate key '" + key + "'");
        gguf_value v;
        const gguf_vtype t = p.read_vtype("key '" + key + "'");
        p.read_value(v, t, "key '" + key + "'", 0);
        f->kv_index_.emplace(key, f->kv_.size());
        f->kv_.emplace_back(std::move(key), std::move(v));
    }

    if (const gguf_value* a = f->find("general.alignment")) {
        if (a->type != GGUF_VTYPE_UINT32)
            p.fail(std::string("general.alignment must be uint32, not ") + gguf_vtype_name(a->type));
        if (!is_pow2(a->u))
            p.fail("general.alignment " + std::to_string(a->u) + " is not a nonzero power of two");
        f->alignment_ = a->u;
    }

    f->tensors_.reserve(n_tensors);
    for (uint64_t i = 0; i < n_tensors; ++i) {
        gguf_tensor t;
        t.name = p.read_string("tensor " + std::to_string(i) + " name");
        const std::string field = "tensor '" + t.name + "'";
        if (f->tensor_index_.count(t.name)) p.fail("duplicate tensor name '" + t.name + "'");
        t.n_dims = p.read<uint32_t>(field + " n_dims");
        if (t.n_dims == 0 || t.n_dims > 4)
            p.fail(field + ": n_dims " + std::to_string(t.n_dims) + " is not in 1..4");
        uint64_t n_elem = 1;
        for (uint32_t d = 0; d < t.n_dims; ++d) {
            const int64_t ne = p.read<int64_t>(field + " dimension " + std::to_string(d));
            if (ne < 0) p.fail(field + ": dimension " + std::to_string(d) + " is negative (" + std::to_string(ne) + ")");
            if (!checked_mul(n_elem, (uint64_t)ne, &n_elem) || n_elem > (uint64_t)INT64_MAX)
                p.fail(field + ": element count overflows");
            t.ne[d] = ne;
        }
        const uint32_t type = p.read<uint32_t>(field + " type");
        const ggml_type_size g = ggml_type_geometry(type);
        if (g.block_size == 0) p.fail(field + ": unknown tensor type " + std::to_string(type));
        if (!g.supported)
            p.fail(field + ": unsupported tensor type " + std::string(g.name) + " (" + std::to_string(type) + ")");
        t.type = static_cast<ggml_type>(type);
        if (t.ne[0] % g.block_size != 0)
            p.fail(field + ": ne[0] = " + std::to_string(t.ne[0]) + " is not a multiple of the " +
                   g.name + " block size " + std::to_string(g.block_size));
        uint64_t row_bytes, nbytes;
        if (!checked_mul((uint64_t)t.ne[0] / g.block_size, g.type_size, &row_bytes) ||
            !checked_mul(row_bytes, n_elem / (t.ne[0] ? (uint64_t)t.ne[0] : 1), &nbytes))
            p.fail(field + ": byte size overflows");
        if (t.ne[0] == 0) nbytes = 0;
        t.nbytes = nbytes;
        t.offset = p.read<uint64_t>(field + " offset");
        if (t.offset % f->alignment_ != 0)
            p.fail(field + ": offset " + std::to_string(t.offset) +
                   " is not a multiple of the alignment " + std::to_string(f->alignment_));
        f->tensor_index_.emplace(t.name, f->tensors_.size());
        f->tensors_.push_back(std::move(t));
    }

    // Data section starts at the next multiple of the alignment.
    uint64_t data_start = p.pos;
    if (data_start % f->alignment_) data_start += f->alignment_ - data_start % f->alignment_;
    for (auto& t : f->tensors_) {
        uint64_t begin, end;
        if (!checked_add(data_start, t.offset, &begin) || !checked_add(begin, t.nbytes, &end) ||
            end > f->size_)
            p.fail("tensor '" + t.name + "': data (offset " + std::to_string(t.offset) + ", " +
                   std::to_string(t.nbytes) + " bytes) is past the end of the file (truncated?)");
        t.data = f->map_ + begin;
    }

    // Special-token ids must index the vocabulary.
    if (const gguf_value* toks = f->find("tokenizer.ggml.tokens")) {
        const uint64_t n_vocab = toks->type == GGUF_VTYPE_ARRAY ? toks->arr.size() : 0;
        for (const char* key : kSpecialTokenKeys) {
            const gguf_value* v = f->find(key);
            if (!v) continue;
            const bool is_signed = v->type == GGUF_VTYPE_INT8 || v->type == GGUF_VTYPE_INT16 ||
                                   v->type == GGUF_VTYPE_INT32 || v->type == GGUF_VTYPE_INT64;
            if (is_signed && v->i == -1) continue;  // "none"
            const uint64_t id = is_signed ? (uint64_t)v->i : v->u;
            if ((is_signed && v->i < 0) || id >= n_vocab)
                p.fail(std::string(key) + " = " + (is_signed ? std::to_string(v->i) : std::to_string(v->u)) +
                       " is past the vocabulary of " + std::to_string(n_vocab) + " tokens");
        }
    }
    return f;
}

gguf_file::~gguf_file() {
    if (map_) munmap(const_cast<uint8_t*>(map_), size_);
}

const gguf_value* gguf_file::find(const std::string& key) const {
    auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const gguf_tensor* gguf_file::tensor(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

bool is_unsigned_int(gguf_vtype t) {
    return t == GGUF_VTYPE_UINT8 || t == GGUF_VTYPE_UINT16 || t == GGUF_VTYPE_UINT32 ||
           t == GGUF_VTYPE_UINT64;
}
bool is_signed_int(gguf_vtype t) {
    return t == GGUF_VTYPE_INT8 || t == GGUF_VTYPE_INT16 || t == GGUF_VTYPE_INT32 ||
           t == GGUF_VTYPE_INT64;
}

[[noreturn]] void wrong_type(const gguf_file& f, const std::string& key, const char* want,
                             gguf_vtype got) {
    throw error("gguf: " + f.path() + ": key '" + key + "' should be " + want + ", not " +
                gguf_vtype_name(got));
}

}  // namespace

uint64_t gguf_file::get_uint(const std::string& key) const {
    const gguf_value* v = find(key);
    if (!v) throw error("gguf: " + path_ + ": key '" + key + "' is missing");
    if (is_unsigned_int(v->type)) return v->u;
    if (is_signed_int(v->type) && v->i >= 0) return (uint64_t)v->i;
    wrong_type(*this, key, "a non-negative integer", v->type);
}

uint64_t gguf_file::get_uint_or(const std::string& key, uint64_t dflt) const {
    return find(key) ? get_uint(key) : dflt;
}

int64_t gguf_file::get_int_or(const std::string& key, int64_t dflt) const {
    const gguf_value* v = find(key);
    if (!v) return dflt;
    if (is_signed_int(v->type)) return v->i;
    if (is_unsigned_int(v->type) && v->u <= (uint64_t)INT64_MAX) return (int64_t)v->u;
    wrong_type(*this, key, "an integer", v->type);
}

double gguf_file::get_float(const std::string& key) const {
    const gguf_value* v = find(key);
    if (!v) throw error("gguf: " + path_ + ": key '" + key + "' is missing");
    if (v->type == GGUF_VTYPE_FLOAT32 || v->type == GGUF_VTYPE_FLOAT64) return v->f;
    wrong_type(*this, key, "a float", v->type);
}

double gguf_file::get_float_or(const std::string& key, double dflt) const {
    return find(key) ? get_float(key) : dflt;
}

bool gguf_file::get_bool_or(const std::string& key, bool dflt) const {
    const gguf_value* v = find(key);
    if (!v) return dflt;
    if (v->type != GGUF_VTYPE_BOOL) wrong_type(*this, key, "a bool", v->type);
    return v->u != 0;
}

std::string gguf_file::get_str(const std::string& key) const {
    const gguf_value* v = find(key);
    if (!v) throw error("gguf: " + path_ + ": key '" + key + "' is missing");
    if (v->type != GGUF_VTYPE_STRING) wrong_type(*this, key, "a string", v->type);
    return v->s;
}

std::string gguf_file::get_str_or(const std::string& key, const std::string& dflt) const {
    return find(key) ? get_str(key) : dflt;
}

const std::vector<gguf_value>& gguf_file::get_arr(const std::string& key, gguf_vtype elem) const {
    const gguf_value* v = find(key);
    if (!v) throw error("gguf: " + path_ + ": key '" + key + "' is missing");
    if (v->type != GGUF_VTYPE_ARRAY) wrong_type(*this, key, "an array", v->type);
    if (v->elem_type != elem)
        throw error("gguf: " + path_ + ": key '" + key + "' should be an array of " +
                    gguf_vtype_name(elem) + ", not of " + gguf_vtype_name(v->elem_type));
    return v->arr;
}

std::string gguf_value_to_string(const gguf_value& v, size_t max_items) {
    std::ostringstream os;
    switch (v.type) {
        case GGUF_VTYPE_STRING: return v.s;
        case GGUF_VTYPE_BOOL: return v.u ? "true" : "false";
        case GGUF_VTYPE_FLOAT32: case GGUF_VTYPE_FLOAT64: os << v.f; return os.str();
        case GGUF_VTYPE_ARRAY: {
            os << "[";
            for (size_t i = 0; i < v.arr.size() && i < max_items; ++i) {
                if (i) os << ", ";
                if (v.arr[i].type == GGUF_VTYPE_STRING) os << '"' << v.arr[i].s << '"';
                else os << gguf_value_to_string(v.arr[i], max_items);
            }
            if (v.arr.size() > max_items) os << ", ... (" << v.arr.size() << " items)";
            os << "]";
            return os.str();
        }
        default:
            if (is_signed_int(v.type)) return std::to_string(v.i);
            return std::to_string(v.u);
    }
}

}  // namespace kvrt
