// GGUF reader: maps the file, then validates it front to back. The format is
// documented in gguf.h.
//
// Every count read from the file is bounded by the bytes left after it (each
// entry needs some minimum size on disk) before anything is reserved, so a
// forged count fails fast instead of allocating. Error messages are built only
// on failure: the hot loops (49k-entry token arrays) do a bounds check, a copy
// and nothing else.
#include "gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
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

namespace {

constexpr uint64_t kHeaderSize = 4 + 4 + 8 + 8;  // magic, version, n_tensors, n_kv
// Smallest on-disk entries: key (u64 length, empty string) + u32 type + a
// 1-byte value; tensor info with u64 name length + u32 n_dims + one u64 dim +
// u32 type + u64 offset.
constexpr uint64_t kMinKvSize = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoSize = 8 + 4 + 8 + 4 + 8;
// Nested arrays recurse; the limit keeps a forged file from exhausting the stack.
constexpr int kMaxArrayDepth = 8;
constexpr uint64_t kMaxTensorDims = 4;
// A gguf_value is ~100 bytes in memory, so a long array of 1-byte values
// would cost 100x its size on disk. Real metadata holds about a million values
// (256k-token vocabularies with scores and types); this cap keeps a hostile
// file from asking for tens of GB while leaving plenty of headroom.
constexpr uint64_t kMaxMetadataValues = uint64_t(1) << 24;

const char* const kSpecialTokenKeys[] = {
    "tokenizer.ggml.bos_token_id",     "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.separator_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.eom_token_id",     "tokenizer.ggml.mask_token_id",
};

bool is_pow2(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

bool is_unsigned_int(gguf_vtype t) {
    return t == GGUF_VTYPE_UINT8 || t == GGUF_VTYPE_UINT16 || t == GGUF_VTYPE_UINT32 ||
           t == GGUF_VTYPE_UINT64;
}
bool is_signed_int(gguf_vtype t) {
    return t == GGUF_VTYPE_INT8 || t == GGUF_VTYPE_INT16 || t == GGUF_VTYPE_INT32 ||
           t == GGUF_VTYPE_INT64;
}

// Bytes one value of type t needs at least on disk.
uint64_t gguf_min_value_size(gguf_vtype t) {
    switch (t) {
        case GGUF_VTYPE_UINT8: case GGUF_VTYPE_INT8: case GGUF_VTYPE_BOOL: return 1;
        case GGUF_VTYPE_UINT16: case GGUF_VTYPE_INT16: return 2;
        case GGUF_VTYPE_UINT32: case GGUF_VTYPE_INT32: case GGUF_VTYPE_FLOAT32: return 4;
        case GGUF_VTYPE_UINT64: case GGUF_VTYPE_INT64: case GGUF_VTYPE_FLOAT64: return 8;
        case GGUF_VTYPE_STRING: return 8;      // u64 length
        case GGUF_VTYPE_ARRAY: return 4 + 8;   // u32 element type + u64 count
    }
    return 1;
}

// Length of the valid UTF-8 sequence at s[i], or 0 if it is not one
// (overlong forms and surrogates included).
size_t utf8_seq_len(const std::string& s, size_t i) {
    const auto at = [&](size_t k) { return k < s.size() ? (unsigned char)s[k] : 0u; };
    const unsigned c = at(i);
    const auto cont = [&](size_t k) { return (at(k) & 0xC0) == 0x80; };
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return cont(i + 1) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        const unsigned c1 = at(i + 1);
        if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F)) return 0;
        return cont(i + 1) && cont(i + 2) ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        const unsigned c1 = at(i + 1);
        if ((c == 0xF0 && c1 < 0x90) || (c == 0xF4 && c1 > 0x8F)) return 0;
        return cont(i + 1) && cont(i + 2) && cont(i + 3) ? 4 : 0;
    }
    return 0;
}

// Quotes untrusted text (keys, tensor names, string values) so that it stays
// one line of valid UTF-8 (Python decodes error messages strictly): control
// bytes, invalid UTF-8, quotes and backslashes are escaped; long text is cut.
std::string gguf_quote(const std::string& s, size_t max_len = 120) {
    static const char hex[] = "0123456789abcdef";
    std::string r = "'";
    for (size_t i = 0; i < s.size();) {
        if (i >= max_len) {
            r += "...";
            break;
        }
        const unsigned char c = (unsigned char)s[i];
        const size_t n = utf8_seq_len(s, i);
        if (n > 1) {
            r.append(s, i, n);
            i += n;
            continue;
        }
        ++i;
        switch (c) {
            case '\n': r += "\\n"; break;
            case '\t': r += "\\t"; break;
            case '\r': r += "\\r"; break;
            case '\'': r += "\\'"; break;
            case '\\': r += "\\\\"; break;
            default:
                if (c < 0x20 || c >= 0x7f) {
                    r += "\\x";
                    r += hex[c >> 4];
                    r += hex[c & 15];
                } else {
                    r += (char)c;
                }
        }
    }
    return r + "'";
}

// Bounds-checked sequential reads over the image. `ctx` names the entry
// being parsed ("key 'x'", "tensor 'y'") and `index` the array element path,
// so that failures can say exactly where they happened.
struct gguf_cursor {
    const uint8_t* base;
    uint64_t size;
    uint64_t pos;
    const std::string& file;
    std::string ctx;
    uint64_t index[kMaxArrayDepth + 1];
    int depth = 0;
    uint64_t n_array_values = 0;  // array elements read so far, all keys

    uint64_t remaining() const { return size - pos; }
};

[[noreturn]] void gguf_fail(const gguf_cursor& c, const std::string& what) {
    std::string msg = "gguf: " + c.file + ": ";
    if (!c.ctx.empty()) {
        msg += c.ctx;
        for (int d = 0; d < c.depth; ++d) msg += "[" + std::to_string(c.index[d]) + "]";
        msg += ": ";
    }
    throw error(msg + what);
}

[[noreturn]] void gguf_fail_past_end(const gguf_cursor& c, const char* what, uint64_t n) {
    gguf_fail(c, std::string(what) + " (" + std::to_string(n) + " bytes at offset " +
                     std::to_string(c.pos) + ") is past the end of the file (size " +
                     std::to_string(c.size) + ")");
}

template <class T>
T gguf_read(gguf_cursor& c, const char* what) {
    if (sizeof(T) > c.remaining()) gguf_fail_past_end(c, what, sizeof(T));
    T v;
    std::memcpy(&v, c.base + c.pos, sizeof v);
    c.pos += sizeof v;
    return v;
}

std::string gguf_read_string(gguf_cursor& c, const char* what) {
    const uint64_t len = gguf_read<uint64_t>(c, what);
    if (len > c.remaining())
        gguf_fail(c, std::string(what) + ": string length " + std::to_string(len) +
                         " at offset " + std::to_string(c.pos) +
                         " is past the end of the file (size " + std::to_string(c.size) + ")");
    std::string s(reinterpret_cast<const char*>(c.base + c.pos), len);
    c.pos += len;
    return s;
}

gguf_vtype gguf_read_vtype(gguf_cursor& c, const char* what) {
    const uint32_t t = gguf_read<uint32_t>(c, what);
    if (t > GGUF_VTYPE_FLOAT64)
        gguf_fail(c, std::string("invalid ") + what + " " + std::to_string(t));
    return static_cast<gguf_vtype>(t);
}

void gguf_read_value(gguf_cursor& c, gguf_value& v, gguf_vtype t) {
    v.type = t;
    switch (t) {
        case GGUF_VTYPE_UINT8: v.u = gguf_read<uint8_t>(c, "uint8 value"); break;
        case GGUF_VTYPE_INT8: v.i = gguf_read<int8_t>(c, "int8 value"); break;
        case GGUF_VTYPE_UINT16: v.u = gguf_read<uint16_t>(c, "uint16 value"); break;
        case GGUF_VTYPE_INT16: v.i = gguf_read<int16_t>(c, "int16 value"); break;
        case GGUF_VTYPE_UINT32: v.u = gguf_read<uint32_t>(c, "uint32 value"); break;
        case GGUF_VTYPE_INT32: v.i = gguf_read<int32_t>(c, "int32 value"); break;
        case GGUF_VTYPE_UINT64: v.u = gguf_read<uint64_t>(c, "uint64 value"); break;
        case GGUF_VTYPE_INT64: v.i = gguf_read<int64_t>(c, "int64 value"); break;
        case GGUF_VTYPE_FLOAT32: v.f = gguf_read<float>(c, "float32 value"); break;
        case GGUF_VTYPE_FLOAT64: v.f = gguf_read<double>(c, "float64 value"); break;
        case GGUF_VTYPE_BOOL: {
            const uint8_t b = gguf_read<uint8_t>(c, "bool value");
            if (b > 1) gguf_fail(c, "bool value " + std::to_string(b) + " is not 0 or 1");
            v.u = b;
            break;
        }
        case GGUF_VTYPE_STRING: v.s = gguf_read_string(c, "string value"); break;
        case GGUF_VTYPE_ARRAY: {
            if (c.depth == kMaxArrayDepth)
                gguf_fail(c, "arrays nested deeper than " + std::to_string(kMaxArrayDepth));
            v.elem_type = gguf_read_vtype(c, "array element type");
            const uint64_t n = gguf_read<uint64_t>(c, "array length");
            if (n > c.remaining() / gguf_min_value_size(v.elem_type))
                gguf_fail(c, "array length " + std::to_string(n) + " of " +
                                 gguf_vtype_name(v.elem_type) + " at offset " +
                                 std::to_string(c.pos) + " is past the end of the file (size " +
                                 std::to_string(c.size) + ")");
            c.n_array_values += n;  // no overflow: each n is below the file size
            if (c.n_array_values > kMaxMetadataValues)
                gguf_fail(c, "array length " + std::to_string(n) + " takes the metadata past " +
                                 std::to_string(kMaxMetadataValues) + " values in all");
            v.arr.resize(n);
            const int d = c.depth++;
            for (uint64_t i = 0; i < n; ++i) {
                c.index[d] = i;
                gguf_read_value(c, v.arr[i], v.elem_type);
            }
            c.depth = d;
            break;
        }
    }
}

}  // namespace

// Fills a gguf_file from its image; a friend, so it can write the private fields.
struct gguf_parser {
    static void parse(gguf_file& f);
    static void parse_header(gguf_cursor& c, gguf_file& f, uint64_t* n_tensors, uint64_t* n_kv);
    static void parse_kv(gguf_cursor& c, gguf_file& f, uint64_t n_kv);
    static void parse_alignment(gguf_cursor& c, gguf_file& f);
    static void parse_tensor_info(gguf_cursor& c, gguf_file& f, uint64_t i);
    static void check_tensor_data(gguf_cursor& c, gguf_file& f);
    static void check_special_tokens(gguf_cursor& c, const gguf_file& f);
};

void gguf_parser::parse_header(gguf_cursor& c, gguf_file& f, uint64_t* n_tensors,
                               uint64_t* n_kv) {
    if (c.size == 0) gguf_fail(c, "file is empty");
    if (c.size < 4 || std::memcmp(c.base, "GGUF", 4) != 0)
        gguf_fail(c, "bad magic (not a GGUF file)");
    if (c.size < kHeaderSize)
        gguf_fail(c, "file too short for the GGUF header (" + std::to_string(c.size) +
                         " bytes, need " + std::to_string(kHeaderSize) + ")");
    c.pos = 4;
    f.version_ = gguf_read<uint32_t>(c, "version");
    if (f.version_ == 1) gguf_fail(c, "GGUF version 1 is not supported (only versions 2 and 3)");
    if (f.version_ == 0x02000000 || f.version_ == 0x03000000)
        gguf_fail(c, "big-endian GGUF files are not supported");
    if (f.version_ != 2 && f.version_ != 3)
        gguf_fail(c, "unsupported GGUF version " + std::to_string(f.version_) +
                         " (only versions 2 and 3)");
    *n_tensors = gguf_read<uint64_t>(c, "tensor count");
    *n_kv = gguf_read<uint64_t>(c, "key-value count");
    if (*n_kv > c.remaining() / kMinKvSize)
        gguf_fail(c, "key-value count " + std::to_string(*n_kv) + " is too large for a file of " +
                         std::to_string(c.size) + " bytes");
    if (*n_tensors > c.remaining() / kMinTensorInfoSize)
        gguf_fail(c, "tensor count " + std::to_string(*n_tensors) +
                         " is too large for a file of " + std::to_string(c.size) + " bytes");
}

void gguf_parser::parse_kv(gguf_cursor& c, gguf_file& f, uint64_t n_kv) {
    f.kv_.reserve(n_kv);
    f.kv_index_.reserve(n_kv);
    for (uint64_t i = 0; i < n_kv; ++i) {
        c.ctx = "key " + std::to_string(i);
        std::string key = gguf_read_string(c, "key");
        c.ctx = "key " + gguf_quote(key);
        if (f.kv_index_.count(key)) gguf_fail(c, "duplicate key");
        gguf_value v;
        gguf_read_value(c, v, gguf_read_vtype(c, "value type"));
        f.kv_index_.emplace(key, f.kv_.size());
        f.kv_.emplace_back(std::move(key), std::move(v));
    }
    c.ctx.clear();
}

void gguf_parser::parse_alignment(gguf_cursor& c, gguf_file& f) {
    const gguf_value* a = f.find("general.alignment");
    if (!a) return;
    c.ctx = "key 'general.alignment'";
    if (a->type != GGUF_VTYPE_UINT32)
        gguf_fail(c, std::string("alignment must be a uint32, not ") + gguf_vtype_name(a->type));
    if (!is_pow2(a->u))
        gguf_fail(c, "alignment " + std::to_string(a->u) + " is not a nonzero power of two");
    f.alignment_ = a->u;
    c.ctx.clear();
}

void gguf_parser::parse_tensor_info(gguf_cursor& c, gguf_file& f, uint64_t i) {
    gguf_tensor t;
    c.ctx = "tensor " + std::to_string(i);
    t.name = gguf_read_string(c, "name");
    c.ctx = "tensor " + gguf_quote(t.name);
    if (f.tensor_index_.count(t.name)) gguf_fail(c, "duplicate tensor name");

    t.n_dims = gguf_read<uint32_t>(c, "n_dims");
    if (t.n_dims == 0 || t.n_dims > kMaxTensorDims)
        gguf_fail(c, "n_dims " + std::to_string(t.n_dims) + " is not in 1.." +
                         std::to_string(kMaxTensorDims));
    // The product of the nonzero dimensions bounds every partial product
    // (nelements(), nrows()), so checking it keeps them all inside int64.
    uint64_t prod = 1;
    for (uint32_t d = 0; d < t.n_dims; ++d) {
        const int64_t ne = gguf_read<int64_t>(c, "dimension");
        if (ne < 0)
            gguf_fail(c, "dimension " + std::to_string(d) + " is negative (" +
                             std::to_string(ne) + ")");
        if (ne != 0 && (!checked_mul(prod, (uint64_t)ne, &prod) || prod > (uint64_t)INT64_MAX))
            gguf_fail(c, "dimensions overflow int64 (element count too large)");
        t.ne[d] = ne;
    }

    const uint32_t type = gguf_read<uint32_t>(c, "type");
    const ggml_type_size g = ggml_type_geometry(type);
    // Ids from GGML_TYPE_COUNT up are kvrt's internal formats, never valid in a file.
    if (type >= GGML_TYPE_COUNT || g.block_size == 0)
        gguf_fail(c, "unknown tensor type " + std::to_string(type));
    if (!g.supported)
        gguf_fail(c, "unsupported tensor type " + std::string(g.name) + " (" +
                         std::to_string(type) + ")");
    t.type = static_cast<ggml_type>(type);
    if (t.ne[0] % g.block_size != 0)
        gguf_fail(c, "ne[0] = " + std::to_string(t.ne[0]) + " is not a multiple of the " +
                         g.name + " block size " + std::to_string(g.block_size));
    uint64_t row_bytes = 0;
    if (!checked_mul((uint64_t)t.ne[0] / g.block_size, g.type_size, &row_bytes) ||
        !checked_mul(row_bytes, (uint64_t)t.nrows(), &t.nbytes))
        gguf_fail(c, "data size overflows");

    t.offset = gguf_read<uint64_t>(c, "offset");
    if (t.offset % f.alignment_ != 0)
        gguf_fail(c, "offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                         std::to_string(f.alignment_));
    f.tensor_index_.emplace(t.name, f.tensors_.size());
    f.tensors_.push_back(std::move(t));
}

void gguf_parser::check_tensor_data(gguf_cursor& c, gguf_file& f) {
    c.ctx.clear();
    // The data section starts at the first multiple of the alignment after the infos.
    uint64_t data_start = c.pos;
    if (data_start % f.alignment_ != 0 &&
        !checked_add(data_start, f.alignment_ - data_start % f.alignment_, &data_start))
        gguf_fail(c, "data section start overflows");
    for (gguf_tensor& t : f.tensors_) {
        uint64_t begin = 0, end = 0;
        if (!checked_add(data_start, t.offset, &begin) || !checked_add(begin, t.nbytes, &end) ||
            end > f.size_) {
            c.ctx = "tensor " + gguf_quote(t.name);
            gguf_fail(c, "data (offset " + std::to_string(t.offset) + ", " +
                             std::to_string(t.nbytes) + " bytes, data section at " +
                             std::to_string(data_start) + ") is past the end of the file (size " +
                             std::to_string(f.size_) + "; truncated?)");
        }
        t.data = f.map_ + begin;
    }

    // Overlapping tensors are a corrupt or hostile file: writes through one
    // view (none today, but quantize-in-place tools) would alias another.
    std::vector<const gguf_tensor*> by_offset;
    by_offset.reserve(f.tensors_.size());
    for (const gguf_tensor& t : f.tensors_)
        if (t.nbytes != 0) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const gguf_tensor* a, const gguf_tensor* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
        const gguf_tensor& prev = *by_offset[i - 1];
        const gguf_tensor& t = *by_offset[i];
        if (t.offset < prev.offset + prev.nbytes) {  // no overflow: both checked above
            c.ctx = "tensor " + gguf_quote(t.name);
            gguf_fail(c, "data at offset " + std::to_string(t.offset) + " overlaps tensor " +
                             gguf_quote(prev.name) + " (offset " + std::to_string(prev.offset) +
                             ", " + std::to_string(prev.nbytes) + " bytes)");
        }
    }
}

// Special-token ids index the vocabulary everywhere downstream (tokenizer,
// sampler, embedding lookup), so an id past it is rejected here, once.
void gguf_parser::check_special_tokens(gguf_cursor& c, const gguf_file& f) {
    const gguf_value* toks = f.find("tokenizer.ggml.tokens");
    if (toks && toks->type != GGUF_VTYPE_ARRAY) {
        c.ctx = "key 'tokenizer.ggml.tokens'";
        gguf_fail(c, std::string("must be an array, not ") + gguf_vtype_name(toks->type));
    }
    for (const char* key : kSpecialTokenKeys) {
        const gguf_value* v = f.find(key);
        if (!v) continue;
        c.ctx = std::string("key '") + key + "'";
        const bool is_signed = is_signed_int(v->type);
        if (!is_signed && !is_unsigned_int(v->type))
            gguf_fail(c, std::string("token id must be an integer, not ") +
                             gguf_vtype_name(v->type));
        if (is_signed && v->i == -1) continue;  // llama.cpp's "no such token"
        if (is_signed && v->i < 0)
            gguf_fail(c, "token id " + std::to_string(v->i) + " is negative");
        const uint64_t id = is_signed ? (uint64_t)v->i : v->u;
        if (toks && id >= toks->arr.size())
            gguf_fail(c, "token id " + std::to_string(id) + " is past the vocabulary (" +
                             std::to_string(toks->arr.size()) + " tokens)");
    }
    c.ctx.clear();
}

void gguf_parser::parse(gguf_file& f) {
    gguf_cursor c{f.map_, f.size_, 0, f.path_, {}, {}, 0, 0};
    uint64_t n_tensors = 0, n_kv = 0;
    parse_header(c, f, &n_tensors, &n_kv);
    parse_kv(c, f, n_kv);
    parse_alignment(c, f);
    // Re-bound the tensor count now that the metadata has been consumed.
    if (n_tensors > c.remaining() / kMinTensorInfoSize)
        gguf_fail(c, "tensor count " + std::to_string(n_tensors) +
                         " is too large for the bytes left after the metadata (" +
                         std::to_string(c.remaining()) + ")");
    f.tensors_.reserve(n_tensors);
    f.tensor_index_.reserve(n_tensors);
    for (uint64_t i = 0; i < n_tensors; ++i) parse_tensor_info(c, f, i);
    check_tensor_data(c, f);
    check_special_tokens(c, f);
}

std::unique_ptr<gguf_file> gguf_file::open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw error("gguf: " + path + ": cannot open: " + std::strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        throw error("gguf: " + path + ": cannot open: not a regular file");
    }
    std::unique_ptr<gguf_file> f(new gguf_file());
    f->path_ = path;
    f->size_ = (uint64_t)st.st_size;
    if (f->size_ > 0) {
        // The mapping outlives the descriptor; tensor views point into it.
        void* addr = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
        const int map_errno = errno;
        ::close(fd);
        if (addr == MAP_FAILED)
            throw error("gguf: " + path + ": cannot map: " + std::strerror(map_errno));
        f->map_ = static_cast<const uint8_t*>(addr);
        f->owns_map_ = true;
    } else {
        ::close(fd);
    }
    gguf_parser::parse(*f);
    return f;
}

std::unique_ptr<gguf_file> gguf_file::open_memory(const void* data, size_t size,
                                                  const std::string& name) {
    std::unique_ptr<gguf_file> f(new gguf_file());
    f->path_ = name;
    f->map_ = static_cast<const uint8_t*>(data);
    f->size_ = size;
    gguf_parser::parse(*f);
    return f;
}

gguf_file::~gguf_file() {
    if (owns_map_) munmap(const_cast<uint8_t*>(map_), size_);
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

[[noreturn]] void gguf_fail_key(const gguf_file& f, const std::string& key,
                                const std::string& what) {
    throw error("gguf: " + f.path() + ": key " + gguf_quote(key) + ": " + what);
}

[[noreturn]] void gguf_fail_type(const gguf_file& f, const std::string& key, const char* want,
                                 gguf_vtype got) {
    gguf_fail_key(f, key, std::string("should be ") + want + ", not " + gguf_vtype_name(got));
}

const gguf_value& gguf_require(const gguf_file& f, const std::string& key) {
    const gguf_value* v = f.find(key);
    if (!v) gguf_fail_key(f, key, "is missing");
    return *v;
}

}  // namespace

uint64_t gguf_file::get_uint(const std::string& key) const {
    const gguf_value& v = gguf_require(*this, key);
    if (is_unsigned_int(v.type)) return v.u;
    if (is_signed_int(v.type) && v.i >= 0) return (uint64_t)v.i;
    gguf_fail_type(*this, key, "a non-negative integer", v.type);
}

uint64_t gguf_file::get_uint_or(const std::string& key, uint64_t dflt) const {
    return find(key) ? get_uint(key) : dflt;
}

int64_t gguf_file::get_int_or(const std::string& key, int64_t dflt) const {
    const gguf_value* v = find(key);
    if (!v) return dflt;
    if (is_signed_int(v->type)) return v->i;
    if (is_unsigned_int(v->type) && v->u <= (uint64_t)INT64_MAX) return (int64_t)v->u;
    gguf_fail_type(*this, key, "an integer within int64", v->type);
}

double gguf_file::get_float(const std::string& key) const {
    const gguf_value& v = gguf_require(*this, key);
    if (v.type == GGUF_VTYPE_FLOAT32 || v.type == GGUF_VTYPE_FLOAT64) return v.f;
    gguf_fail_type(*this, key, "a float", v.type);
}

double gguf_file::get_float_or(const std::string& key, double dflt) const {
    return find(key) ? get_float(key) : dflt;
}

bool gguf_file::get_bool_or(const std::string& key, bool dflt) const {
    const gguf_value* v = find(key);
    if (!v) return dflt;
    if (v->type != GGUF_VTYPE_BOOL) gguf_fail_type(*this, key, "a bool", v->type);
    return v->u != 0;
}

std::string gguf_file::get_str(const std::string& key) const {
    const gguf_value& v = gguf_require(*this, key);
    if (v.type != GGUF_VTYPE_STRING) gguf_fail_type(*this, key, "a string", v.type);
    return v.s;
}

std::string gguf_file::get_str_or(const std::string& key, const std::string& dflt) const {
    return find(key) ? get_str(key) : dflt;
}

const std::vector<gguf_value>& gguf_file::get_arr(const std::string& key, gguf_vtype elem) const {
    const gguf_value& v = gguf_require(*this, key);
    if (v.type != GGUF_VTYPE_ARRAY) gguf_fail_type(*this, key, "an array", v.type);
    if (v.elem_type != elem)
        gguf_fail_key(*this, key, std::string("should be an array of ") + gguf_vtype_name(elem) +
                                      ", not of " + gguf_vtype_name(v.elem_type));
    return v.arr;
}

// Top-level strings are shown as they are (names, chat templates); strings
// inside arrays are quoted and escaped so that token lists stay on one line.
std::string gguf_value_to_string(const gguf_value& v, size_t max_items) {
    switch (v.type) {
        case GGUF_VTYPE_STRING: return v.s;
        case GGUF_VTYPE_BOOL: return v.u ? "true" : "false";
        case GGUF_VTYPE_FLOAT32:
        case GGUF_VTYPE_FLOAT64: {
            std::ostringstream os;
            os << v.f;
            return os.str();
        }
        case GGUF_VTYPE_ARRAY: {
            std::string r = "[";
            const size_t shown = std::min(v.arr.size(), max_items);
            for (size_t i = 0; i < shown; ++i) {
                if (i) r += ", ";
                const gguf_value& e = v.arr[i];
                r += e.type == GGUF_VTYPE_STRING ? gguf_quote(e.s, 60)
                                                 : gguf_value_to_string(e, max_items);
            }
            if (v.arr.size() > shown)
                r += (shown ? ", ... (" : "... (") + std::to_string(v.arr.size()) + " items)";
            return r + "]";
        }
        default: return is_signed_int(v.type) ? std::to_string(v.i) : std::to_string(v.u);
    }
}

}  // namespace kvrt
