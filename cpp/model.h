// Model: hyper-parameters and weight views of a decoder-only transformer read
// from a GGUF file. Weights stay in their file types inside the mapping.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "gguf.h"
#include "tokenizer.h"

namespace kvrt {

enum model_arch {
    MODEL_ARCH_LLAMA,  // Llama 2/3, Mistral, SmolLM
    MODEL_ARCH_QWEN2,  // + q/k/v biases, NEOX rope
    MODEL_ARCH_QWEN3,  // + per-head q/k RMSNorm, NEOX rope
};

enum rope_kind {
    ROPE_KIND_NORM,  // rotate adjacent pairs (2i, 2i+1); GGUF llama q/k are permuted for it
    ROPE_KIND_NEOX,  // rotate (i, i + d/2)
};

struct hparams {
    model_arch arch = MODEL_ARCH_LLAMA;
    std::string arch_name;
    int n_vocab = 0;
    int n_ctx_train = 0;
    int n_embd = 0;
    int n_layer = 0;
    int n_head = 0;
    int n_head_kv = 0;
    int head_dim = 0;
    int n_ff = 0;
    int n_rot = 0;  // rotated dims per head (<= head_dim)
    rope_kind rope = ROPE_KIND_NORM;
    float rope_freq_base = 10000.0f;
    float rope_freq_scale = 1.0f;  // linear scaling: positions multiplied by this
    float rms_eps = 1e-5f;
    int sliding_window = 0;  // 0 = full attention
    // Llama 3.1-style rope frequency factors (per rotated pair), empty if none.
    std::vector<float> rope_freq_factors;
};

// A 2-D weight matrix of `rows` rows of `cols` elements in its file type.
struct weight {
    ggml_type type = GGML_TYPE_F32;
    int64_t cols = 0;  // ne[0]: the contiguous dimension (input features)
    int64_t rows = 0;  // ne[1]: output features
    size_t row_bytes = 0;
    const uint8_t* data = nullptr;
    const char* name = nullptr;
    bool present() const { return data != nullptr; }
};

// A 1-D f32 vector (norm weights, biases).
struct vec_f32 {
    const float* data = nullptr;
    int64_t n = 0;
    bool present() const { return data != nullptr; }
};

struct layer_weights {
    vec_f32 attn_norm;  // (n_embd)
    weight wq;          // (n_head*head_dim, n_embd)
    weight wk;          // (n_head_kv*head_dim, n_embd)
    weight wv;          // (n_head_kv*head_dim, n_embd)
    weight wo;          // (n_embd, n_head*head_dim)
    vec_f32 bq, bk, bv; // qwen2 biases
    vec_f32 q_norm, k_norm;  // qwen3 per-head norms (head_dim)
    vec_f32 ffn_norm;   // (n_embd)
    weight w_gate;      // (n_ff, n_embd)
    weight w_up;        // (n_ff, n_embd)
    weight w_down;      // (n_embd, n_ff)
};

class model {
public:
    // Opens and validates the file; throws kvrt::error.
    static std::unique_ptr<model> load(const std::string& path);

    const hparams& hp() const { return hp_; }
    const gguf_file& file() const { return *file_; }
    const kvrt::tokenizer& vocab() const { return *tok_; }

    const weight& tok_embd() const { return tok_embd_; }  // (n_vocab, n_embd)
    const weight& output() const { return output_; }      // tok_embd when tied
    const vec_f32& output_norm() const { return output_norm_; }
    const std::vector<layer_weights>& layers() const { return layers_; }

    std::string describe() const;  // "llama 135M Q4_1" style summary

private:
    model() = default;
    void load_hparams();
    void load_weights();

    std::unique_ptr<gguf_file> file_;
    std::unique_ptr<kvrt::tokenizer> tok_;
    hparams hp_;
    weight tok_embd_, output_;
    vec_f32 output_norm_;
    std::vector<layer_weights> layers_;
};

}  // namespace kvrt
