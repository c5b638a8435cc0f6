// UTF-8 and the Unicode properties the tokenizers need, plus the hand-written
// pre-tokenizer splitters equivalent to the regexes of GPT-2, Llama 3 and
// Qwen2 (no regex engine: these run over code points in one pass).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvrt {

// Decodes UTF-8; invalid bytes become U+FFFD one byte at a time. With
// `offsets`, also the byte offset of each code point plus a final s.size().
std::vector<uint32_t> utf8_decode(const std::string& s, std::vector<size_t>* offsets = nullptr);
void utf8_append(std::string& out, uint32_t cp);
// Length of the UTF-8 sequence starting with byte c (1 for invalid bytes).
size_t utf8_len(unsigned char c);

bool unicode_is_letter(uint32_t cp);
bool unicode_is_number(uint32_t cp);
bool unicode_is_space(uint32_t cp);

enum pretok_kind {
    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    PRETOK_GPT2,
    // Each \p{N} isolated (Hugging Face's Digits(individual_digits)), then GPT2
    PRETOK_SMOLLM,
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
    //  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
    PRETOK_LLAMA3,
    // LLAMA3 with \p{N} instead of \p{N}{1,3}
    PRETOK_QWEN2,
};

// Splits text into pre-tokens (UTF-8 substrings covering the whole text).
std::vector<std::string> pretokenize(const std::string& text, pretok_kind kind);

extern const uint32_t kUnicodeLetterRanges[][2];
extern const size_t kUnicodeLetterRanges_count;
extern const uint32_t kUnicodeNumberRanges[][2];
extern const size_t kUnicodeNumberRanges_count;

}  // namespace kvrt
