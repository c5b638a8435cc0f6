// Tokenizer built from GGUF metadata (tokenizer.ggml.*):
//   model "gpt2"  - byte-level BPE; pre-tokenizer from tokenizer.ggml.pre
//                   (smollm / gpt2, llama-bpe (Llama 3), qwen2, ...)
//   model "llama" - SentencePiece-style BPE over scores, byte fallback <0xXX>
// Special/control tokens, add-BOS/EOS rules and end-of-generation ids included.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gguf.h"

namespace kvrt {

class tokenizer {
public:
    // Throws kvrt::error naming the key when metadata is missing or invalid,
    // or when tokenizer.ggml.model / .pre is one kvrt does not implement.
    explicit tokenizer(const gguf_file& f);
    ~tokenizer();

    // add_special: prepend BOS (and append EOS) as the model's add_bos/add_eos
    // flags say. parse_special: text like "<|im_start|>" maps to its special
    // token instead of being tokenized as plain text.
    std::vector<int32_t> encode(const std::string& text, bool add_special,
                                bool parse_special) const;
    // Raw bytes of one token (byte-level / byte-fallback decoded; may be a
    // partial UTF-8 sequence). Control tokens render as "" unless render_special.
    std::string token_to_piece(int32_t id, bool render_special = false) const;
    std::string decode(const std::vector<int32_t>& ids, bool render_special = false) const;

    int32_t n_vocab() const;
    int32_t bos_id() const;  // -1 if none
    int32_t eos_id() const;  // -1 if none
    bool add_bos() const;
    bool is_eog(int32_t id) const;  // end of generation (eos, eot, <|im_end|>, ...)
    int32_t token_id(const std::string& text) const;  // -1 if not a token
    const std::string& token_text(int32_t id) const;

    struct impl;

private:
    std::unique_ptr<impl> p_;
};

}  // namespace kvrt
