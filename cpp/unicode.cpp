#include "unicode.h"

#include <algorithm>

namespace kvrt {

size_t utf8_len(unsigned char c) {
    if (c < 0x80) return 1;
    if ((c & 0xE0) == 0xC0) return 2;
    if ((c & 0xF0) == 0xE0) return 3;
    if ((c & 0xF8) == 0xF0) return 4;
    return 1;
}

std::vector<uint32_t> utf8_decode(const std::string& s, std::vector<size_t>* offsets) {
    std::vector<uint32_t> out;
    out.reserve(s.size());
    if (offsets) offsets->clear();
    const unsigned char* p = (const unsigned char*)s.data();
    const size_t n = s.size();
    for (size_t i = 0; i < n;) {
        if (offsets) offsets->push_back(i);
        const size_t len = utf8_len(p[i]);
        bool ok = len > 1 && i + len <= n;
        uint32_t cp = len == 1 ? p[i] : p[i] & (0xFF >> (len + 1));
        for (size_t k = 1; ok && k < len; ++k) {
            if ((p[i + k] & 0xC0) != 0x80) ok = false;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (len == 1) {
            out.push_back(p[i] < 0x80 ? p[i] : 0xFFFD);
            ++i;
        } else if (ok) {
            out.push_back(cp);
            i += len;
        } else {
            out.push_back(0xFFFD);
            ++i;
        }
    }
    if (offsets) offsets->push_back(n);
    return out;
}

void utf8_append(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += (char)cp;
    } else if (cp < 0x800) {
        out += (char)(0xC0 | (cp >> 6));
        out += (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += (char)(0xE0 | (cp >> 12));
        out += (char)(0x80 | ((cp >> 6) & 0x3F));
        out += (char)(0x80 | (cp & 0x3F));
    } else {
        out += (char)(0xF0 | (cp >> 18));
        out += (char)(0x80 | ((cp >> 12) & 0x3F));
        out += (char)(0x80 | ((cp >> 6) & 0x3F));
        out += (char)(0x80 | (cp & 0x3F));
    }
}

static bool in_ranges(uint32_t cp, const uint32_t (*r)[2], size_t n) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        const size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0]) hi = mid;
        else if (cp > r[mid][1]) lo = mid + 1;
        else return true;
    }
    return false;
}

bool unicode_is_letter(uint32_t cp) {
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return in_ranges(cp, kUnicodeLetterRanges, kUnicodeLetterRanges_count);
}

bool unicode_is_number(uint32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return in_ranges(cp, kUnicodeNumberRanges, kUnicodeNumberRanges_count);
}

// The White_Space property: what \s matches in Oniguruma (Hugging Face tokenizers).
bool unicode_is_space(uint32_t cp) {
    switch (cp) {
        case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
        case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
            return true;
        default:
            return cp >= 0x2000 && cp <= 0x200A;
    }
}

namespace {

// Pre-token matcher over code points; each match_* returns the length of the
// match at i, 0 when the alternative does not match.
struct splitter {
    const std::vector<uint32_t>& c;
    size_t n;

    bool L(size_t i) const { return i < n && unicode_is_letter(c[i]); }
    bool N(size_t i) const { return i < n && unicode_is_number(c[i]); }
    bool S(size_t i) const { return i < n && unicode_is_space(c[i]); }
    bool NL(size_t i) const { return i < n && (c[i] == '\r' || c[i] == '\n'); }
    // [^\s\p{L}\p{N}]
    bool P(size_t i) const { return i < n && !S(i) && !L(i) && !N(i); }

    size_t contraction(size_t i, bool icase) const {
        if (c[i] != '\'' || i + 1 >= n) return 0;
        auto lc = [&](size_t k) -> uint32_t {
            if (k >= n) return 0;
            uint32_t x = c[k];
            return icase && x >= 'A' && x <= 'Z' ? x + 32 : x;
        };
        const uint32_t a = lc(i + 1), b = lc(i + 2);
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
        return 0;
    }

    size_t run(size_t i, bool (splitter::*pred)(size_t) const) const {
        size_t j = i;
        while ((this->*pred)(j)) ++j;
        return j - i;
    }

    // \s+(?!\S) then \s+ : a whitespace run leaves its last character to the
    // next token when a non-space follows.
    size_t spaces(size_t i) const {
        const size_t len = run(i, &splitter::S);
        if (len >= 2 && i + len < n) return len - 1;
        return len;
    }

    size_t gpt2(size_t i) const {
        if (size_t k = contraction(i, false)) return k;
        const size_t o = c[i] == ' ' ? 1 : 0;
        if (L(i + o)) return o + run(i + o, &splitter::L);
        if (N(i + o)) return o + run(i + o, &splitter::N);
        if (P(i + o)) return o + run(i + o, &splitter::P);
        return spaces(i);
    }

    size_t llama3(size_t i, size_t max_digits) const {
        if (size_t k = contraction(i, true)) return k;
        if (L(i)) return run(i, &splitter::L);
        if (!NL(i) && !N(i) && L(i + 1)) return 1 + run(i + 1, &splitter::L);
        if (N(i)) return std::min(max_digits, run(i, &splitter::N));
        const size_t o = c[i] == ' ' ? 1 : 0;
        if (P(i + o)) {
            size_t j = i + o + run(i + o, &splitter::P);
            while (NL(j)) ++j;
            return j - i;
        }
        // \s*[\r\n]+ : up to and including the last newline of the run.
        const size_t len = run(i, &splitter::S);
        for (size_t k = len; k > 0; --k)
            if (NL(i + k - 1)) return k;
        return spaces(i);
    }
};

}  // namespace

std::vector<std::string> pretokenize(const std::string& text, pretok_kind kind) {
    std::vector<size_t> off;
    const std::vector<uint32_t> cps = utf8_decode(text, &off);
    std::vector<std::string> out;
    // Pieces are cut from the original bytes, so invalid UTF-8 survives.
    auto emit = [&](size_t i, size_t len) {
        out.push_back(text.substr(off[i], off[i + len] - off[i]));
    };
    const size_t n = cps.size();
    for (size_t seg = 0; seg < n;) {
        // SMOLLM isolates every digit first, then applies GPT-2 to the text
        // between digits: a segment ends before the next digit.
        size_t end = n;
        if (kind == PRETOK_SMOLLM) {
            if (unicode_is_number(cps[seg])) {
                emit(seg++, 1);
                continue;
            }
            end = seg;
            while (end < n && !unicode_is_number(cps[end])) ++end;
        }
        splitter sp{cps, end};
        for (size_t i = seg; i < end;) {
            size_t len = 0;
            switch (kind) {
                case PRETOK_GPT2: case PRETOK_SMOLLM: len = sp.gpt2(i); break;
                case PRETOK_LLAMA3: len = sp.llama3(i, 3); break;
                case PRETOK_QWEN2: len = sp.llama3(i, 1); break;
            }
            if (len == 0) len = 1;
            emit(i, len);
            i += len;
        }
        seg = end;
    }
    return out;
}

}  // namespace kvrt
