#include "model.h"

#include <cmath>
#include <cstdio>

#include "quants.h"

namespace kvrt {

namespace {

struct arch_info {
    const char* name;
    model_arch arch;
    rope_kind rope;
};

// Architectures the forward pass implements. Adding one is a row here plus
// whatever tensors it adds in load_weights / the forward pass.
const arch_info kArchs[] = {
    {"llama", MODEL_ARCH_LLAMA, ROPE_KIND_NORM},
    {"mistral", MODEL_ARCH_LLAMA, ROPE_KIND_NORM},
    {"qwen2", MODEL_ARCH_QWEN2, ROPE_KIND_NEOX},
    {"qwen3", MODEL_ARCH_QWEN3, ROPE_KIND_NEOX},
};

int to_int(uint64_t v, const std::string& key, uint64_t max) {
    if (v == 0 || v > max)
        throw error("model: " + key + " = " + std::to_string(v) + " is out of range (1.." +
                    std::to_string(max) + ")");
    return static_cast<int>(v);
}

}  // namespace

std::unique_ptr<model> model::load(const std::string& path) {
    std::unique_ptr<model> m(new model());
    m->file_ = gguf_file::open(path);
    m->load_hparams();
    m->tok_ = std::make_unique<kvrt::tokenizer>(*m->file_);
    m->load_weights();
    return m;
}

void model::load_hparams() {
    const gguf_file& f = *file_;
    hp_.arch_name = f.get_str_or("general.architecture", "");
    if (hp_.arch_name.empty()) throw error("model: general.architecture is missing");
    const arch_info* info = nullptr;
    for (const auto& a : kArchs)
        if (hp_.arch_name == a.name) info = &a;
    if (!info)
        throw error("model: architecture '" + hp_.arch_name +
                    "' is not supported (supported: llama, mistral, qwen2, qwen3)");
    hp_.arch = info->arch;
    hp_.rope = info->rope;
    const std::string a = hp_.arch_name + ".";
    const uint64_t kMaxDim = 1u << 20;

    hp_.n_embd = to_int(f.get_uint(a + "embedding_length"), a + "embedding_length", kMaxDim);
    hp_.n_layer = to_int(f.get_uint(a + "block_count"), a + "block_count", 4096);
    hp_.n_head = to_int(f.get_uint(a + "attention.head_count"), a + "attention.head_count", 4096);
    hp_.n_head_kv = to_int(f.get_uint_or(a + "attention.head_count_kv", hp_.n_head),
                           a + "attention.head_count_kv", 4096);
    hp_.n_ff = to_int(f.get_uint(a + "feed_forward_length"), a + "feed_forward_length", kMaxDim);
    hp_.n_ctx_train = to_int(f.get_uint_or(a + "context_length", 2048), a + "context_length",
                             1u << 24);
    if (hp_.n_head % hp_.n_head_kv != 0)
        throw error("model: head_count " + std::to_string(hp_.n_head) +
                    " is not a multiple of head_count_kv " + std::to_string(hp_.n_head_kv));
    uint64_t hd_default = hp_.n_embd % hp_.n_head == 0 ? hp_.n_embd / hp_.n_head : 0;
    hp_.head_dim = to_int(f.get_uint_or(a + "attention.key_length", hd_default),
                          a + "attention.key_length", 1024);
    if (f.get_uint_or(a + "attention.value_length", hp_.head_dim) != (uint64_t)hp_.head_dim)
        throw error("model: attention.value_length differing from key_length is not supported");
    if (hp_.head_dim % 2 != 0) throw error("model: head dimension must be even");
    hp_.n_rot = to_int(f.get_uint_or(a + "rope.dimension_count", hp_.head_dim),
                       a + "rope.dimension_count", hp_.head_dim);
    if (hp_.n_rot % 2 != 0) throw error("model: rope.dimension_count must be even");
    hp_.rope_freq_base = (float)f.get_float_or(a + "rope.freq_base", 10000.0);
    hp_.rms_eps = (float)f.get_float_or(a + "attention.layer_norm_rms_epsilon", 1e-5);
    if (!(hp_.rope_freq_base > 0) || !(hp_.rms_eps > 0) || !std::isfinite(hp_.rope_freq_base))
        throw error("model: rope.freq_base and layer_norm_rms_epsilon must be positive");
    hp_.sliding_window = (int)f.get_uint_or(a + "attention.sliding_window", 0);

    const std::string scaling = f.get_str_or(a + "rope.scaling.type", "none");
    if (scaling == "linear") {
        double factor = f.get_float_or(a + "rope.scaling.factor", 1.0);
        if (!(factor > 0)) throw error("model: rope.scaling.factor must be positive");
        hp_.rope_freq_scale = (float)(1.0 / factor);
    } else if (scaling != "none" && scaling != "llama3") {
        // llama3 scaling is carried by the rope_freqs tensor, read below.
        throw error("model: rope scaling type '" + scaling + "' is not supported");
    }
}

void model::load_weights() {
    const gguf_file& f = *file_;
    auto find = [&](const std::string& name, bool required) -> const gguf_tensor* {
        const gguf_tensor* t = f.tensor(name);
        if (!t && required) throw error("model: tensor '" + name + "' is missing");
        return t;
    };
    auto get_weight = [&](const std::string& name, int64_t cols, int64_t rows, bool required) {
        weight w;
        const gguf_tensor* t = find(name, required);
        if (!t) return w;
        if (t->n_dims != 2 || t->ne[0] != cols || t->ne[1] != rows)
            throw error("model: tensor '" + name + "' has shape [" + std::to_string(t->ne[0]) +
                        ", " + std::to_string(t->ne[1]) + "], expected [" +
                        std::to_string(cols) + ", " + std::to_string(rows) + "]");
        w.type = t->type;
        w.cols = cols;
        w.rows = rows;
        w.row_bytes = quants_row_size(t->type, cols);
        w.data = t->data;
        w.name = t->name.c_str();
        return w;
    };
    auto get_vec = [&](const std::string& name, int64_t n, bool required) {
        vec_f32 v;
        const gguf_tensor* t = find(name, required);
        if (!t) return v;
        if (t->type != GGML_TYPE_F32 || t->nelements() != n)
            throw error("model: tensor '" + name + "' must be F32 with " + std::to_string(n) +
                        " elements");
        v.data = reinterpret_cast<const float*>(t->data);
        v.n = n;
        return v;
    };

    const int64_t E = hp_.n_embd, HD = hp_.head_dim;
    const int64_t QD = hp_.n_head * HD, KVD = hp_.n_head_kv * HD;
    const gguf_tensor* emb = find("token_embd.weight", true);
    hp_.n_vocab = (int)emb->ne[1];
    if (hp_.n_vocab != vocab().n_vocab())
        throw error("model: token_embd has " + std::to_string(hp_.n_vocab) +
                    " rows but the vocabulary has " + std::to_string(vocab().n_vocab()) +
                    " tokens");
    tok_embd_ = get_weight("token_embd.weight", E, hp_.n_vocab, true);
    output_ = get_weight("output.weight", E, hp_.n_vocab, false);
    if (!output_.present()) output_ = tok_embd_;  // tied embeddings
    output_norm_ = get_vec("output_norm.weight", E, true);
    if (const gguf_tensor* rf = find("rope_freqs.weight", false)) {
        vec_f32 v = get_vec("rope_freqs.weight", hp_.n_rot / 2, true);
        hp_.rope_freq_factors.assign(v.data, v.data + v.n);
        (void)rf;
    }

    const bool qwen2 = hp_.arch == MODEL_ARCH_QWEN2, qwen3 = hp_.arch == MODEL_ARCH_QWEN3;
    layers_.resize(hp_.n_layer);
    for (int i = 0; i < hp_.n_layer; ++i) {
        const std::string p = "blk." + std::to_string(i) + ".";
        layer_weights& L = layers_[i];
        L.attn_norm = get_vec(p + "attn_norm.weight", E, true);
        L.wq = get_weight(p + "attn_q.weight", E, QD, true);
        L.wk = get_weight(p + "attn_k.weight", E, KVD, true);
        L.wv = get_weight(p + "attn_v.weight", E, KVD, true);
        L.wo = get_weight(p + "attn_output.weight", QD, E, true);
        L.bq = get_vec(p + "attn_q.bias", QD, qwen2);
        L.bk = get_vec(p + "attn_k.bias", KVD, qwen2);
        L.bv = get_vec(p + "attn_v.bias", KVD, qwen2);
        L.q_norm = get_vec(p + "attn_q_norm.weight", HD, qwen3);
        L.k_norm = get_vec(p + "attn_k_norm.weight", HD, qwen3);
        L.ffn_norm = get_vec(p + "ffn_norm.weight", E, true);
        L.w_gate = get_weight(p + "ffn_gate.weight", E, hp_.n_ff, true);
        L.w_up = get_weight(p + "ffn_up.weight", E, hp_.n_ff, true);
        L.w_down = get_weight(p + "ffn_down.weight", hp_.n_ff, E, true);
    }
}

std::string model::describe() const {
    const gguf_tensor* t = file_->tensor("blk.0.attn_q.weight");
    uint64_t n_params = 0;
    for (const auto& x : file_->tensors()) n_params += (uint64_t)x.nelements();
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s %.0fM params, %d layers, %s weights", hp_.arch_name.c_str(),
                  n_params / 1e6, hp_.n_layer, t ? ggml_type_geometry(t->type).name : "?");
    return buf;
}

}  // namespace kvrt
