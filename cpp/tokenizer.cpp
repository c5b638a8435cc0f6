#include "tokenizer.h"

#include <algorithm>
#include <cstring>
#include <queue>
#include <unordered_map>

#include "unicode.h"

namespace kvrt {

namespace {

enum token_type {
    TOKEN_TYPE_NORMAL = 1,
    TOKEN_TYPE_UNKNOWN = 2,
    TOKEN_TYPE_CONTROL = 3,
    TOKEN_TYPE_USER_DEFINED = 4,
    TOKEN_TYPE_UNUSED = 5,
    TOKEN_TYPE_BYTE = 6,
};

enum vocab_kind { VOCAB_BPE, VOCAB_SPM };

struct pre_name {
    const char* name;
    pretok_kind kind;
};

// tokenizer.ggml.pre names (as llama.cpp's converter writes them).
const pre_name kPreNames[] = {
    {"default", PRETOK_GPT2},   {"gpt2", PRETOK_GPT2},         {"gpt-2", PRETOK_GPT2},
    {"smollm", PRETOK_SMOLLM},  {"llama-bpe", PRETOK_LLAMA3},  {"llama3", PRETOK_LLAMA3},
    {"qwen2", PRETOK_QWEN2},    {"qwen35", PRETOK_QWEN2},
};

// End-of-generation tokens recognised by their text.
const char* kEogTexts[] = {"<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>",
                           "<|end|>",    "<end_of_turn>", "<|end_of_text|>", "</s>"};

const char* kSpmSpace = "\xE2\x96\x81";  // U+2581

// GPT-2's reversible map from bytes to printable code points.
void byte_unicode_tables(uint32_t byte_to_cp[256], std::unordered_map<uint32_t, uint8_t>& cp_to_byte) {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
        const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        byte_to_cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
        cp_to_byte[byte_to_cp[b]] = (uint8_t)b;
    }
}

}  // namespace

struct tokenizer::impl {
    vocab_kind kind = VOCAB_BPE;
    pretok_kind pre = PRETOK_GPT2;
    std::vector<std::string> text;
    std::vector<float> score;
    std::vector<int32_t> type;
    std::unordered_map<std::string, int32_t> id_of;
    std::unordered_map<std::string, int32_t> merge_rank;  // "left right" -> rank
    std::vector<int32_t> specials;  // matched in text, longest first
    std::vector<bool> eog;
    int32_t bos = -1, eos = -1, unk = -1;
    bool add_bos = false, add_eos = false, add_space_prefix = false;
    uint32_t byte_to_cp[256];
    std::unordered_map<uint32_t, uint8_t> cp_to_byte;
    int32_t byte_token[256];  // SPM byte fallback ids, -1 if absent

    void bpe_word(const std::string& word, std::vector<int32_t>& out) const;
    void spm_fragment(const std::string& frag, std::vector<int32_t>& out) const;
    void encode_fragment(const std::string& frag, bool first, std::vector<int32_t>& out) const;
};

tokenizer::tokenizer(const gguf_file& f) : p_(std::make_unique<impl>()) {
    impl& t = *p_;
    const std::string model = f.get_str("tokenizer.ggml.model");
    if (model == "gpt2") {
        t.kind = VOCAB_BPE;
        const std::string pre = f.get_str_or("tokenizer.ggml.pre", "default");
        bool found = false;
        for (const auto& p : kPreNames)
            if (pre == p.name) t.pre = p.kind, found = true;
        if (!found) throw error("tokenizer: pre-tokenizer '" + pre + "' is not supported");
    } else if (model == "llama") {
        t.kind = VOCAB_SPM;
    } else {
        throw error("tokenizer: tokenizer model '" + model + "' is not supported (gpt2, llama)");
    }

    const auto& toks = f.get_arr("tokenizer.ggml.tokens", GGUF_VTYPE_STRING);
    if (toks.empty()) throw error("tokenizer: tokenizer.ggml.tokens is empty");
    const size_t n = toks.size();
    t.text.resize(n);
    t.id_of.reserve(n * 2);
    for (size_t i = 0; i < n; ++i) {
        t.text[i] = toks[i].s;
        t.id_of.emplace(t.text[i], (int32_t)i);
    }
    t.type.assign(n, TOKEN_TYPE_NORMAL);
    if (f.find("tokenizer.ggml.token_type")) {
        const auto& ty = f.get_arr("tokenizer.ggml.token_type", GGUF_VTYPE_INT32);
        if (ty.size() != n) throw error("tokenizer: token_type has a different length than tokens");
        for (size_t i = 0; i < n; ++i) t.type[i] = (int32_t)ty[i].i;
    }
    t.score.assign(n, 0.0f);
    if (f.find("tokenizer.ggml.scores")) {
        const auto& sc = f.get_arr("tokenizer.ggml.scores", GGUF_VTYPE_FLOAT32);
        if (sc.size() != n) throw error("tokenizer: scores has a different length than tokens");
        for (size_t i = 0; i < n; ++i) t.score[i] = (float)sc[i].f;
    }
    if (t.kind == VOCAB_BPE) {
        const auto& merges = f.get_arr("tokenizer.ggml.merges", GGUF_VTYPE_STRING);
        t.merge_rank.reserve(merges.size() * 2);
        for (size_t i = 0; i < merges.size(); ++i) t.merge_rank.emplace(merges[i].s, (int32_t)i);
    }
    byte_unicode_tables(t.byte_to_cp, t.cp_to_byte);
    for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        auto it = t.id_of.find(name);
        t.byte_token[b] = it == t.id_of.end() ? -1 : it->second;
    }

    auto special_id = [&](const char* key, int32_t dflt) -> int32_t {
        const gguf_value* v = f.find(key);
        if (!v) return dflt;
        const int64_t id = f.get_int_or(key, -1);
        return id >= 0 && (size_t)id < n ? (int32_t)id : -1;
    };
    const bool spm = t.kind == VOCAB_SPM;
    t.bos = special_id("tokenizer.ggml.bos_token_id", spm ? 1 : -1);
    t.eos = special_id("tokenizer.ggml.eos_token_id", spm ? 2 : -1);
    t.unk = special_id("tokenizer.ggml.unknown_token_id", spm ? 0 : -1);
    t.add_bos = f.get_bool_or("tokenizer.ggml.add_bos_token", spm);
    t.add_eos = f.get_bool_or("tokenizer.ggml.add_eos_token", false);
    t.add_space_prefix = f.get_bool_or("tokenizer.ggml.add_space_prefix", spm);

    t.eog.assign(n, false);
    for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                            "tokenizer.ggml.eom_token_id"}) {
        const int32_t id = special_id(key, -1);
        if (id >= 0) t.eog[id] = true;
    }
    for (size_t i = 0; i < n; ++i) {
        if (t.type[i] != TOKEN_TYPE_CONTROL && t.type[i] != TOKEN_TYPE_USER_DEFINED) continue;
        if (!t.text[i].empty()) t.specials.push_back((int32_t)i);
        for (const char* e : kEogTexts)
            if (t.text[i] == e) t.eog[i] = true;
    }
    std::stable_sort(t.specials.begin(), t.specials.end(), [&](int32_t a, int32_t b) {
        return t.text[a].size() > t.text[b].size();
    });
}

tokenizer::~tokenizer() = default;

// Byte-level BPE of one pre-token: bytes mapped to GPT-2's code points, then
// the lowest-ranked adjacent pair merged until no pair has a rank.
void tokenizer::impl::bpe_word(const std::string& word, std::vector<int32_t>& out) const {
    std::string mapped;
    for (unsigned char b : word) utf8_append(mapped, byte_to_cp[b]);
    auto whole = id_of.find(mapped);
    if (whole != id_of.end()) {
        out.push_back(whole->second);
        return;
    }
    std::vector<std::string> sym;
    for (size_t i = 0; i < mapped.size();) {
        const size_t len = utf8_len((unsigned char)mapped[i]);
        sym.push_back(mapped.substr(i, len));
        i += len;
    }
    std::string key;
    while (sym.size() > 1) {
        int32_t best = INT32_MAX;
        size_t at = 0;
        for (size_t i = 0; i + 1 < sym.size(); ++i) {
            key.assign(sym[i]).append(" ").append(sym[i + 1]);
            auto it = merge_rank.find(key);
            if (it != merge_rank.end() && it->second < best) best = it->second, at = i;
        }
        if (best == INT32_MAX) break;
        sym[at] += sym[at + 1];
        sym.erase(sym.begin() + at + 1);
    }
    for (const auto& s : sym) {
        auto it = id_of.find(s);
        if (it != id_of.end()) {
            out.push_back(it->second);
            continue;
        }
        // Not in the vocabulary: fall back to single mapped characters.
        for (size_t i = 0; i < s.size();) {
            const size_t len = utf8_len((unsigned char)s[i]);
            auto c = id_of.find(s.substr(i, len));
            if (c != id_of.end()) out.push_back(c->second);
            else if (unk >= 0) out.push_back(unk);
            i += len;
        }
    }
}

// SentencePiece BPE: start from UTF-8 characters and repeatedly merge the
// adjacent pair whose concatenation is the highest-scoring vocabulary entry
// (leftmost on ties); unknown pieces fall back to <0xXX> byte tokens.
void tokenizer::impl::spm_fragment(const std::string& text, std::vector<int32_t>& out) const {
    struct sym {
        int prev, next;
        size_t start, len;
    };
    std::vector<sym> s;
    for (size_t i = 0; i < text.size();) {
        const size_t len = std::min(utf8_len((unsigned char)text[i]), text.size() - i);
        s.push_back({(int)s.size() - 1, (int)s.size() + 1, i, len});
        i += len;
    }
    if (s.empty()) return;
    s.back().next = -1;
    struct bigram {
        int left, right;
        float score;
        size_t size;
        bool operator<(const bigram& o) const {
            return score < o.score || (score == o.score && left > o.left);
        }
    };
    std::priority_queue<bigram> q;
    auto try_add = [&](int l, int r) {
        if (l < 0 || r < 0) return;
        auto it = id_of.find(text.substr(s[l].start, s[l].len + s[r].len));
        if (it == id_of.end()) return;
        q.push({l, r, score[it->second], s[l].len + s[r].len});
    };
    for (size_t i = 1; i < s.size(); ++i) try_add((int)i - 1, (int)i);
    while (!q.empty()) {
        const bigram b = q.top();
        q.pop();
        sym& l = s[b.left];
        sym& r = s[b.right];
        if (l.len == 0 || r.len == 0 || l.len + r.len != b.size) continue;  // stale
        l.len += r.len;
        r.len = 0;
        l.next = r.next;
        if (r.next >= 0) s[r.next].prev = b.left;
        try_add(l.prev, b.left);
        try_add(b.left, l.next);
    }
    for (int i = 0; i >= 0; i = s[i].next) {
        const std::string piece = text.substr(s[i].start, s[i].len);
        auto it = id_of.find(piece);
        if (it != id_of.end()) {
            out.push_back(it->second);
            continue;
        }
        for (unsigned char b : piece) {
            if (byte_token[b] >= 0) out.push_back(byte_token[b]);
            else if (unk >= 0) out.push_back(unk);
        }
    }
}

void tokenizer::impl::encode_fragment(const std::string& frag, bool first,
                                      std::vector<int32_t>& out) const {
    if (frag.empty()) return;
    if (kind == VOCAB_SPM) {
        std::string t;
        if (first && add_space_prefix) t = kSpmSpace;
        for (char ch : frag) {
            if (ch == ' ') t += kSpmSpace;
            else t += ch;
        }
        spm_fragment(t, out);
        return;
    }
    for (const std::string& w : pretokenize(frag, pre)) bpe_word(w, out);
}

std::vector<int32_t> tokenizer::encode(const std::string& text, bool add_special,
                                       bool parse_special) const {
    const impl& t = *p_;
    std::vector<int32_t> out;
    if (add_special && t.add_bos && t.bos >= 0) out.push_back(t.bos);
    // Special tokens split the text into fragments; user-defined tokens are
    // always matched, control tokens only when parse_special.
    size_t start = 0, i = 0;
    bool first = true;
    while (i < text.size()) {
        int32_t hit = -1;
        for (int32_t id : t.specials) {
            if (!parse_special && t.type[id] == TOKEN_TYPE_CONTROL) continue;
            const std::string& s = t.text[id];
            if (text.compare(i, s.size(), s) == 0) {
                hit = id;
                break;
            }
        }
        if (hit < 0) {
            ++i;
            continue;
        }
        t.encode_fragment(text.substr(start, i - start), first, out);
        out.push_back(hit);
        first = false;
        i += t.text[hit].size();
        start = i;
    }
    t.encode_fragment(text.substr(start), first, out);
    if (add_special && t.add_eos && t.eos >= 0) out.push_back(t.eos);
    return out;
}

std::string tokenizer::token_to_piece(int32_t id, bool render_special) const {
    const impl& t = *p_;
    if (id < 0 || (size_t)id >= t.text.size()) return "";
    const int32_t ty = t.type[id];
    if (ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_UNKNOWN || ty == TOKEN_TYPE_UNUSED)
        return render_special ? t.text[id] : "";
    if (ty == TOKEN_TYPE_USER_DEFINED) return t.text[id];
    const std::string& s = t.text[id];
    std::string out;
    if (t.kind == VOCAB_SPM) {
        if (ty == TOKEN_TYPE_BYTE && s.size() == 6) {
            out += (char)std::strtol(s.substr(3, 2).c_str(), nullptr, 16);
            return out;
        }
        for (size_t i = 0; i < s.size();) {
            if (s.compare(i, 3, kSpmSpace) == 0) {
                out += ' ';
                i += 3;
            } else {
                out += s[i++];
            }
        }
        return out;
    }
    for (uint32_t cp : utf8_decode(s)) {
        auto it = t.cp_to_byte.find(cp);
        if (it != t.cp_to_byte.end()) out += (char)it->second;
        else utf8_append(out, cp);
    }
    return out;
}

std::string tokenizer::decode(const std::vector<int32_t>& ids, bool render_special) const {
    std::string out;
    // SentencePiece: the space added in front of the text is not output.
    bool strip_space = p_->kind == VOCAB_SPM && p_->add_space_prefix;
    for (int32_t id : ids) {
        std::string piece = token_to_piece(id, render_special);
        if (strip_space && !piece.empty()) {
            if (piece[0] == ' ') piece.erase(0, 1);
            strip_space = false;
        }
        out += piece;
    }
    return out;
}

int32_t tokenizer::n_vocab() const { return (int32_t)p_->text.size(); }
int32_t tokenizer::bos_id() const { return p_->bos; }
int32_t tokenizer::eos_id() const { return p_->eos; }
bool tokenizer::add_bos() const { return p_->add_bos; }
bool tokenizer::is_eog(int32_t id) const {
    return id >= 0 && (size_t)id < p_->eog.size() && p_->eog[id];
}
int32_t tokenizer::token_id(const std::string& text) const {
    auto it = p_->id_of.find(text);
    return it == p_->id_of.end() ? -1 : it->second;
}
const std::string& tokenizer::token_text(int32_t id) const { return p_->text.at(id); }

}  // namespace kvrt
