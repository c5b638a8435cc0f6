#include "tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <queue>
#include <unordered_map>

#include "unicode.h"

namespace kvrt {

namespace {

// tokenizer.ggml.token_type values (SentencePiece's piece types).
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

// tokenizer.ggml.pre names written by llama.cpp's converter, grouped by the
// regex they stand for.
const pre_name kPreNames[] = {
    {"default", PRETOK_GPT2},      {"gpt2", PRETOK_GPT2},       {"gpt-2", PRETOK_GPT2},
    {"mpt", PRETOK_GPT2},          {"olmo", PRETOK_GPT2},       {"smollm", PRETOK_SMOLLM},
    {"starcoder", PRETOK_SMOLLM},  {"refact", PRETOK_SMOLLM},   {"codeshell", PRETOK_SMOLLM},
    {"llama-bpe", PRETOK_LLAMA3},  {"llama3", PRETOK_LLAMA3},   {"llama-v3", PRETOK_LLAMA3},
    {"qwen2", PRETOK_QWEN2},       {"stablelm2", PRETOK_QWEN2},
};

// End-of-generation tokens recognised by their text (llama.cpp's list).
const char* const kEogTexts[] = {"<|eot_id|>",  "<|im_end|>",      "<|end|>",     "<end_of_turn>",
                                 "<|endoftext|>", "<|eom_id|>",    "<EOT>",       "_<EOT>",
                                 "<|end_of_text|>", "<end_of_utterance>"};

const char kSpmSpace[] = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

// GPT-2's reversible map from bytes to printable code points: printable
// Latin-1 bytes map to themselves, the rest to U+0100 onwards in byte order.
void bpe_byte_to_cp(uint32_t byte_to_cp[256]) {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
        const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        byte_to_cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
    }
}

uint64_t pair_key(int32_t left, int32_t right) {
    return ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
}

}  // namespace

struct tokenizer::impl {
    struct merge {
        int32_t rank;
        int32_t result;
    };

    vocab_kind kind = VOCAB_BPE;
    pretok_kind pre = PRETOK_GPT2;
    bool ignore_merges = false;  // Llama 3: a pre-token that is a token is not merged
    std::vector<std::string> text;   // token strings as stored
    std::vector<std::string> piece;  // the bytes each token stands for
    std::vector<float> score;
    std::vector<int32_t> type;
    std::unordered_map<std::string, int32_t> id_of;
    std::unordered_map<uint64_t, merge> merges;  // pair_key(left, right) -> merge
    int32_t byte_id[256];  // BPE: token of a byte's GPT-2 character; SPM: <0xXX>; -1 if none
    std::string byte_char[256];  // BPE: a byte's GPT-2 character, UTF-8
    // Tokens matched in raw text, bucketed by first byte, longest first.
    std::vector<int32_t> specials[256];
    std::vector<bool> eog;
    int32_t bos = -1, eos = -1, unk = -1;
    bool add_bos = false, add_eos = false, add_space_prefix = false;

    int32_t token_id_or(const std::string& s) const;  // -1 if not a token
    int32_t spm_id(const std::string& s) const;
    void bpe_word(const std::string& word, std::vector<int32_t>& out) const;
    void spm_fragment(const std::string& text, std::vector<int32_t>& out) const;
    void encode_fragment(const std::string& frag, bool space_prefix,
                         std::vector<int32_t>& out) const;
};

tokenizer::tokenizer(const gguf_file& f) : p_(std::make_unique<impl>()) {
    impl& t = *p_;
    const std::string model = f.get_str("tokenizer.ggml.model");
    if (model == "gpt2") {
        t.kind = VOCAB_BPE;
        const std::string pre = f.get_str_or("tokenizer.ggml.pre", "default");
        const auto* it = std::find_if(std::begin(kPreNames), std::end(kPreNames),
                                      [&](const pre_name& p) { return pre == p.name; });
        if (it == std::end(kPreNames))
            throw error("tokenizer: tokenizer.ggml.pre '" + pre + "' is not supported");
        t.pre = it->kind;
        t.ignore_merges = t.pre == PRETOK_LLAMA3;
    } else if (model == "llama") {
        t.kind = VOCAB_SPM;
    } else {
        throw error("tokenizer: tokenizer.ggml.model '" + model +
                    "' is not supported (gpt2, llama)");
    }
    const bool spm = t.kind == VOCAB_SPM;

    const auto& toks = f.get_arr("tokenizer.ggml.tokens", GGUF_VTYPE_STRING);
    if (toks.empty() || toks.size() > INT32_MAX)
        throw error("tokenizer: tokenizer.ggml.tokens has " + std::to_string(toks.size()) +
                    " entries");
    const size_t n = toks.size();
    t.text.resize(n);
    t.id_of.reserve(n * 2);
    for (size_t i = 0; i < n; ++i) {
        t.text[i] = toks[i].s;
        t.id_of.emplace(t.text[i], (int32_t)i);  // first id wins on duplicates
    }
    t.type.assign(n, TOKEN_TYPE_NORMAL);
    if (f.find("tokenizer.ggml.token_type")) {
        const auto& ty = f.get_arr("tokenizer.ggml.token_type", GGUF_VTYPE_INT32);
        if (ty.size() != n)
            throw error("tokenizer: tokenizer.ggml.token_type has " + std::to_string(ty.size()) +
                        " entries, tokenizer.ggml.tokens " + std::to_string(n));
        for (size_t i = 0; i < n; ++i) t.type[i] = (int32_t)ty[i].i;
    }
    t.score.assign(n, 0.0f);
    if (f.find("tokenizer.ggml.scores")) {
        const auto& sc = f.get_arr("tokenizer.ggml.scores", GGUF_VTYPE_FLOAT32);
        if (sc.size() != n)
            throw error("tokenizer: tokenizer.ggml.scores has " + std::to_string(sc.size()) +
                        " entries, tokenizer.ggml.tokens " + std::to_string(n));
        for (size_t i = 0; i < n; ++i) t.score[i] = (float)sc[i].f;
    }

    std::fill(std::begin(t.byte_id), std::end(t.byte_id), -1);
    t.piece.resize(n);
    if (spm) {
        for (int b = 0; b < 256; ++b) {
            char name[8];
            std::snprintf(name, sizeof name, "<0x%02X>", b);
            t.byte_id[b] = t.token_id_or(name);
        }
        for (size_t i = 0; i < n; ++i) {
            const std::string& s = t.text[i];
            if (t.type[i] == TOKEN_TYPE_BYTE && s.size() == 6 && s.compare(0, 3, "<0x") == 0) {
                t.piece[i] = std::string(1, (char)std::strtol(s.c_str() + 3, nullptr, 16));
                continue;
            }
            for (size_t k = 0; k < s.size();) {
                if (s.compare(k, 3, kSpmSpace) == 0) {
                    t.piece[i] += ' ';
                    k += 3;
                } else {
                    t.piece[i] += s[k++];
                }
            }
        }
    } else {
        uint32_t byte_to_cp[256];
        bpe_byte_to_cp(byte_to_cp);
        std::unordered_map<uint32_t, uint8_t> cp_to_byte;
        for (int b = 0; b < 256; ++b) {
            cp_to_byte[byte_to_cp[b]] = (uint8_t)b;
            utf8_append(t.byte_char[b], byte_to_cp[b]);
            t.byte_id[b] = t.token_id_or(t.byte_char[b]);
        }
        for (size_t i = 0; i < n; ++i) {
            // Added tokens (user-defined, control) are stored as plain text.
            if (t.type[i] == TOKEN_TYPE_USER_DEFINED || t.type[i] == TOKEN_TYPE_CONTROL) {
                t.piece[i] = t.text[i];
                continue;
            }
            for (uint32_t cp : utf8_decode(t.text[i])) {
                auto it = cp_to_byte.find(cp);
                if (it != cp_to_byte.end()) t.piece[i] += (char)it->second;
                else utf8_append(t.piece[i], cp);
            }
        }
        const auto& merges = f.get_arr("tokenizer.ggml.merges", GGUF_VTYPE_STRING);
        t.merges.reserve(merges.size() * 2);
        for (size_t r = 0; r < merges.size() && r < INT32_MAX; ++r) {
            const std::string& m = merges[r].s;
            const size_t sp = m.find(' ', 1);
            if (sp == std::string::npos)
                throw error("tokenizer: tokenizer.ggml.merges[" + std::to_string(r) +
                            "] has no space: '" + m + "'");
            const std::string left = m.substr(0, sp), right = m.substr(sp + 1);
            const int32_t l = t.token_id_or(left), rt = t.token_id_or(right),
                          res = t.token_id_or(left + right);
            // A merge whose parts or result are not tokens can never apply.
            if (l < 0 || rt < 0 || res < 0) continue;
            t.merges.emplace(pair_key(l, rt), impl::merge{(int32_t)r, res});
        }
    }

    auto special_id = [&](const char* key, int32_t dflt) -> int32_t {
        if (!f.find(key)) return dflt;
        const int64_t id = f.get_int_or(key, -1);
        return id >= 0 && (uint64_t)id < n ? (int32_t)id : -1;
    };
    // Defaults when keys are absent follow llama.cpp.
    t.bos = special_id("tokenizer.ggml.bos_token_id", spm ? 1 : -1);
    t.eos = special_id("tokenizer.ggml.eos_token_id", spm ? 2 : -1);
    t.unk = special_id("tokenizer.ggml.unknown_token_id", spm ? 0 : -1);
    t.add_bos = f.get_bool_or("tokenizer.ggml.add_bos_token", spm);
    t.add_eos = f.get_bool_or("tokenizer.ggml.add_eos_token", false);
    t.add_space_prefix = f.get_bool_or("tokenizer.ggml.add_space_prefix", spm);

    t.eog.assign(n, false);
    for (int32_t id : {t.eos, special_id("tokenizer.ggml.eot_token_id", -1),
                       special_id("tokenizer.ggml.eom_token_id", -1)})
        if (id >= 0) t.eog[id] = true;
    for (size_t i = 0; i < n; ++i) {
        if (t.type[i] != TOKEN_TYPE_CONTROL && t.type[i] != TOKEN_TYPE_USER_DEFINED &&
            t.type[i] != TOKEN_TYPE_UNKNOWN)
            continue;
        if (!t.text[i].empty()) t.specials[(uint8_t)t.text[i][0]].push_back((int32_t)i);
        for (const char* e : kEogTexts)
            if (t.text[i] == e) t.eog[i] = true;
    }
    for (auto& bucket : t.specials)
        std::stable_sort(bucket.begin(), bucket.end(), [&](int32_t a, int32_t b) {
            return t.text[a].size() > t.text[b].size();
        });
}

tokenizer::~tokenizer() = default;

int32_t tokenizer::impl::token_id_or(const std::string& s) const {
    auto it = id_of.find(s);
    return it == id_of.end() ? -1 : it->second;
}

// Byte-level BPE of one pre-token. Symbols start as one token per byte; the
// adjacent pair with the lowest merge rank (leftmost on ties) is merged until
// none is left, as Hugging Face's BPE does. A min-heap of candidate pairs over
// a linked list keeps long pre-tokens (whitespace runs, base64) O(n log n);
// heap entries made stale by earlier merges are recognised and skipped.
void tokenizer::impl::bpe_word(const std::string& word, std::vector<int32_t>& out) const {
    if (ignore_merges) {
        std::string mapped;
        for (unsigned char b : word) mapped += byte_char[b];
        const int32_t id = token_id_or(mapped);
        if (id >= 0) {
            out.push_back(id);
            return;
        }
    }
    struct sym {
        int32_t id;  // -2 once merged into its left neighbour
        int prev, next;
    };
    struct cand {
        int32_t rank;
        int left;
        int32_t left_id, right_id;
        bool operator>(const cand& o) const {
            return rank > o.rank || (rank == o.rank && left > o.left);
        }
    };
    const int n = (int)word.size();
    std::vector<sym> s(n);
    for (int i = 0; i < n; ++i) s[i] = {byte_id[(uint8_t)word[i]], i - 1, i + 1 < n ? i + 1 : -1};
    std::priority_queue<cand, std::vector<cand>, std::greater<cand>> q;
    auto push = [&](int l) {
        if (l < 0 || s[l].next < 0) return;
        auto it = merges.find(pair_key(s[l].id, s[s[l].next].id));
        if (it != merges.end()) q.push({it->second.rank, l, s[l].id, s[s[l].next].id});
    };
    for (int i = 0; i + 1 < n; ++i) push(i);
    while (!q.empty()) {
        const cand c = q.top();
        q.pop();
        sym& l = s[c.left];
        if (l.id != c.left_id || l.next < 0 || s[l.next].id != c.right_id) continue;  // stale
        sym& r = s[l.next];
        l.id = merges.at(pair_key(c.left_id, c.right_id)).result;
        r.id = -2;
        l.next = r.next;
        if (r.next >= 0) s[r.next].prev = c.left;
        push(l.prev);
        push(c.left);
    }
    for (int i = 0; i >= 0 && i < n; i = s[i].next) {
        if (s[i].id >= 0) out.push_back(s[i].id);
        else if (unk >= 0) out.push_back(unk);  // a byte with no token (HF drops it)
    }
}

// SentencePiece pieces that BPE may produce: control, unknown and byte tokens
// are reserved and never built by merging (as in sentencepiece's own model).
int32_t tokenizer::impl::spm_id(const std::string& s) const {
    const int32_t id = token_id_or(s);
    if (id < 0) return -1;
    const int32_t ty = type[id];
    return ty == TOKEN_TYPE_NORMAL || ty == TOKEN_TYPE_USER_DEFINED || ty == TOKEN_TYPE_UNUSED
               ? id
               : -1;
}

// SentencePiece BPE (llama.cpp's llm_tokenizer_spm): start from UTF-8
// characters and repeatedly merge the adjacent pair whose concatenation is
// the highest-scoring piece (leftmost on ties). Characters that are no piece
// fall back to <0xXX> byte tokens, else to the unknown token.
void tokenizer::impl::spm_fragment(const std::string& str, std::vector<int32_t>& out) const {
    struct sym {
        int prev, next;
        size_t start, len;  // len 0 once merged into its left neighbour
    };
    std::vector<sym> s;
    for (size_t i = 0; i < str.size();) {
        const size_t len = std::min(utf8_len((unsigned char)str[i]), str.size() - i);
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
        const int32_t id = spm_id(str.substr(s[l].start, s[l].len + s[r].len));
        if (id >= 0) q.push({l, r, score[id], s[l].len + s[r].len});
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
        const std::string p = str.substr(s[i].start, s[i].len);
        const int32_t id = spm_id(p);
        if (id >= 0) {
            out.push_back(id);
            continue;
        }
        for (unsigned char b : p) {
            if (byte_id[b] >= 0) out.push_back(byte_id[b]);
            else if (unk >= 0) out.push_back(unk);
        }
    }
}

// One piece of text between special tokens. space_prefix (SPM only): put
// SentencePiece's dummy prefix U+2581 in front, even of an empty fragment.
void tokenizer::impl::encode_fragment(const std::string& frag, bool space_prefix,
                                      std::vector<int32_t>& out) const {
    if (kind == VOCAB_SPM) {
        if (frag.empty() && !space_prefix) return;
        std::string t;
        t.reserve(frag.size() * 3 + 3);
        if (space_prefix) t = kSpmSpace;
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
    // Special tokens split the text into fragments, longest match first;
    // user-defined tokens always match (like Hugging Face's added tokens),
    // control and unknown tokens only with parse_special (as llama.cpp).
    // SPM's space prefix goes in front of the text as SentencePiece does,
    // also when the text starts with a user-defined token (which SentencePiece
    // matches inside the text); after a control token the text starts afresh
    // and gets one again, as in llama.cpp.
    bool prefix = t.kind == VOCAB_SPM && t.add_space_prefix;
    size_t start = 0, i = 0;
    while (i < text.size()) {
        int32_t hit = -1;
        for (int32_t id : t.specials[(uint8_t)text[i]]) {
            if (!parse_special && t.type[id] != TOKEN_TYPE_USER_DEFINED) continue;
            if (text.compare(i, t.text[id].size(), t.text[id]) == 0) {
                hit = id;
                break;
            }
        }
        if (hit < 0) {
            ++i;
            continue;
        }
        if (i > start || t.type[hit] == TOKEN_TYPE_USER_DEFINED) {
            t.encode_fragment(text.substr(start, i - start), prefix, out);
            prefix = false;
        }
        out.push_back(hit);
        if (t.type[hit] != TOKEN_TYPE_USER_DEFINED)
            prefix = t.kind == VOCAB_SPM && t.add_space_prefix;
        i += t.text[hit].size();
        start = i;
    }
    if (start < text.size()) t.encode_fragment(text.substr(start), prefix, out);
    if (add_special && t.add_eos && t.eos >= 0) out.push_back(t.eos);
    return out;
}

std::string tokenizer::token_to_piece(int32_t id, bool render_special) const {
    const impl& t = *p_;
    if (id < 0 || (size_t)id >= t.text.size()) return "";
    const int32_t ty = t.type[id];
    if (ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_UNKNOWN || ty == TOKEN_TYPE_UNUSED)
        return render_special ? t.text[id] : "";
    return t.piece[id];
}

std::string tokenizer::decode(const std::vector<int32_t>& ids, bool render_special) const {
    std::string out;
    // SentencePiece: the space put in front of the text is not output (the
    // first piece's leading space is dropped, as Hugging Face does).
    bool strip_space = p_->kind == VOCAB_SPM && p_->add_space_prefix;
    for (int32_t id : ids) {
        const std::string& piece = token_to_piece(id, render_special);
        if (strip_space && !piece.empty()) {
            strip_space = false;
            if (piece[0] == ' ') {
                out.append(piece, 1, std::string::npos);
                continue;
            }
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
int32_t tokenizer::token_id(const std::string& text) const { return p_->token_id_or(text); }
const std::string& tokenizer::token_text(int32_t id) const {
    if (id < 0 || (size_t)id >= p_->text.size())
        throw error("tokenizer: token id " + std::to_string(id) + " out of range");
    return p_->text[id];
}

}  // namespace kvrt
