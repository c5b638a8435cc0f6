#include "context.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "quants.h"

namespace kvrt {

device_kind device_from_name(const std::string& name) {
    if (name == "cpu") return DEVICE_CPU;
    if (name == "cuda") return DEVICE_CUDA;
    throw error("unknown device '" + name + "' (known: cpu, cuda)");
}

context::context(const model& m, const context_params& params)
    : model_(m), params_(params),
      pool_(params.n_threads > 0 ? params.n_threads : thread_pool::default_threads()) {
    const hparams& hp = m.hp();
    if (params_.n_ctx <= 0) params_.n_ctx = std::min(hp.n_ctx_train, 4096);
    if (params_.n_ctx > (1 << 24)) throw error("context: n_ctx is too large");
    if (params_.n_batch <= 0) params_.n_batch = 512;
    params_.n_batch = std::min(params_.n_batch, params_.n_ctx);
    resolve_kv_formats();
    kv_ = std::make_unique<kv_cache>(hp.n_layer, params_.n_ctx, hp.n_head_kv, hp.head_dim,
                                     params_.type_k, params_.type_v, calib_.get());
    rope_.init(hp);
    if (params_.device == DEVICE_CUDA) {
        gpu_ = gpu_forward_create(m, params_.n_ctx, params_.n_batch, params_.type_k,
                                  params_.type_v, params_.rope_offset, kv_.get());
        return;  // the CPU scratch is not needed
    }
    const size_t B = params_.n_batch;
    x_.resize(B * hp.n_embd);
    xn_.resize(B * hp.n_embd);
    q_.resize(B * hp.n_head * hp.head_dim);
    k_.resize(B * hp.n_head_kv * hp.head_dim);
    v_.resize(B * hp.n_head_kv * hp.head_dim);
    att_.resize(B * hp.n_head * hp.head_dim);
    gate_.resize(B * hp.n_ff);
    up_.resize(B * hp.n_ff);
    out_.resize(B * hp.n_embd);
}

void context::resolve_kv_formats() {
    const bool pk = params_.type_k.kind == KV_KIND_PCA, pv = params_.type_v.kind == KV_KIND_PCA;
    if (!pk && !pv) return;
    std::string path = params_.kv_calib;
    if (path.empty()) {
        const std::string dflt = kv_calib_default_path(model_.file().path());
        if (std::FILE* f = std::fopen(dflt.c_str(), "rb")) {
            std::fclose(f);
            path = dflt;
        }
    }
    for (kv_type* t : {&params_.type_k, &params_.type_v})
        if (t->kind == KV_KIND_PCA && t->budget < 0) *t = path.empty() ? KV_TYPE_F16 : kv_type{KV_KIND_PCA, 0, 0};
    if (!path.empty()) {
        calib_ = kv_calibration::load(path, model_);
        return;
    }
    if (params_.type_k.kind != KV_KIND_PCA && params_.type_v.kind != KV_KIND_PCA) return;
    // No calibration: the rotation format at the nearest code width that
    // does not exceed the budget (its scale and minimum add 0.5 bit at dim 64).
    std::string was;
    for (kv_type* t : {&params_.type_k, &params_.type_v}) {
        if (t->kind != KV_KIND_PCA) continue;
        const float b = t->budget > 0 ? t->budget : 3.0f;
        const int bits = b >= 8 ? 8 : b >= 4 ? 4 : b >= 3 ? 3 : 2;
        was = kv_type_name(*t);
        *t = kv_type{KV_KIND_ROT, bits, 0};
    }
    std::fprintf(stderr, "kvrt: no KV calibration %s (python -m kvrt calibrate makes one); "
                 "%s falls back to rot\n", kv_calib_default_path(model_.file().path()).c_str(),
                 was.c_str());
}

void context::truncate(int n) {
    if (n < 0 || n > n_past_) throw error("context: cannot truncate to " + std::to_string(n));
    n_past_ = n;
}

void context::eval(const int32_t* tokens, int n, float* logits, int n_logits) {
    const int n_vocab = model_.hp().n_vocab;
    if (n <= 0) throw error("eval: no tokens given");
    if (n_logits < 0 || n_logits > n || (n_logits > 0 && !logits))
        throw error("eval: invalid logits request");
    if ((int64_t)n_past_ + n > params_.n_ctx)
        throw error("eval: " + std::to_string(n_past_ + (int64_t)n) +
                    " tokens do not fit the context of " + std::to_string(params_.n_ctx));
    for (int i = 0; i < n; ++i)
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            throw error("eval: token id " + std::to_string(tokens[i]) + " is out of range");
    const int first_out = n - n_logits;  // first token whose logits are wanted
    for (int i = 0; i < n; i += params_.n_batch) {
        const int nb = std::min(params_.n_batch, n - i);
        const int from = std::max(first_out, i);  // within this batch
        const int k = std::max(0, i + nb - from);
        float* out = k ? logits + (size_t)(from - first_out) * n_vocab : nullptr;
        if (gpu_) {
            if (observer_ || capture_)
                throw error("eval: observers and attention capture run on the CPU only (--device cpu)");
            gpu_->forward(tokens + i, nb, n_past_, out, k);
            n_past_ += nb;
        } else {
            forward_batch(tokens + i, nb, out, k);
        }
    }
}

void context::project(const float* x, int n, int64_t cols, std::initializer_list<matmul_job> jobs) {
    // Weights whose activations share a type go through one parallel pass.
    const matmul_job* all = jobs.begin();
    const int n_jobs = (int)jobs.size();
    for (int i = 0; i < n_jobs;) {
        const ggml_type t = quants_vec_dot_type(all[i].w->type);
        int j = i + 1;
        while (j < n_jobs && quants_vec_dot_type(all[j].w->type) == t) ++j;
        matmul_prepare(x, n, cols, all[i].w->type, &in_a_, pool_);
        matmul_many(all + i, j - i, in_a_, pool_);
        i = j;
    }
}

void context::forward_batch(const int32_t* tokens, int n, float* logits, int n_logits) {
    const hparams& hp = model_.hp();
    const int E = hp.n_embd, HD = hp.head_dim;
    const int QD = hp.n_head * HD, KVD = hp.n_head_kv * HD;
    const int pos0 = n_past_;

    const weight& emb = model_.tok_embd();
    for (int t = 0; t < n; ++t)
        quants_dequantize_row(emb.type, emb.data + (size_t)tokens[t] * emb.row_bytes,
                              x_.data() + (size_t)t * E, E);

    attention_params ap;
    ap.n_head = hp.n_head;
    ap.n_head_kv = hp.n_head_kv;
    ap.head_dim = HD;
    ap.sliding_window = hp.sliding_window;

    for (int il = 0; il < hp.n_layer; ++il) {
        const layer_weights& L = model_.layers()[il];

        // Attention block.
        rms_norm_rows(x_.data(), L.attn_norm.data, xn_.data(), n, E, hp.rms_eps);
        project(xn_.data(), n, E, {{&L.wq, q_.data()}, {&L.wk, k_.data()}, {&L.wv, v_.data()}});
        if (L.bq.present()) add_bias_rows(q_.data(), L.bq.data, n, QD);
        if (L.bk.present()) add_bias_rows(k_.data(), L.bk.data, n, KVD);
        if (L.bv.present()) add_bias_rows(v_.data(), L.bv.data, n, KVD);
        if (L.q_norm.present()) rms_norm_rows(q_.data(), L.q_norm.data, q_.data(), (int64_t)n * hp.n_head, HD, hp.rms_eps);
        if (L.k_norm.present()) rms_norm_rows(k_.data(), L.k_norm.data, k_.data(), (int64_t)n * hp.n_head_kv, HD, hp.rms_eps);
        for (int t = 0; t < n; ++t) {
            rope_.apply(q_.data() + (size_t)t * QD, hp.n_head, pos0 + t + params_.rope_offset);
            rope_.apply(k_.data() + (size_t)t * KVD, hp.n_head_kv, pos0 + t + params_.rope_offset);
        }
        if (observer_) observer_->on_qkv(il, pos0, n, q_.data(), k_.data(), v_.data());
        kv_->keys(il).store(pos0, n, k_.data());
        kv_->values(il).store(pos0, n, v_.data());
        attention_forward(kv_->keys(il), kv_->values(il), q_.data(), n, pos0, ap, att_.data(),
                          att_scratch_, pool_);
        if (capture_) {  // rows of this batch inside the captured window
            attn_capture& cap = *capture_;
            const int t0 = std::max(0, cap.pos0 - pos0);
            const int t1 = std::min(n, cap.pos0 + cap.n_rows - pos0);
            for (int t = t0; t < t1; ++t)
                std::memcpy(&cap.out[((size_t)il * cap.n_rows + pos0 + t - cap.pos0) * QD],
                            &att_[(size_t)t * QD], sizeof(float) * QD);
        }
        matmul_prepare(att_.data(), n, QD, L.wo.type, &in_a_, pool_);
        matmul(L.wo, in_a_, out_.data(), pool_);
        for (size_t i = 0; i < (size_t)n * E; ++i) x_[i] += out_[i];

        // Feed-forward block.
        rms_norm_rows(x_.data(), L.ffn_norm.data, xn_.data(), n, E, hp.rms_eps);
        project(xn_.data(), n, E, {{&L.w_gate, gate_.data()}, {&L.w_up, up_.data()}});
        swiglu(gate_.data(), up_.data(), gate_.data(), (int64_t)n * hp.n_ff);
        matmul_prepare(gate_.data(), n, hp.n_ff, L.w_down.type, &in_a_, pool_);
        matmul(L.w_down, in_a_, out_.data(), pool_);
        for (size_t i = 0; i < (size_t)n * E; ++i) x_[i] += out_[i];
    }
    n_past_ += n;

    if (n_logits == 0) return;
    // Only the rows whose logits are wanted go through the output layer.
    const int first = n - n_logits;
    const int n_out = n_logits;
    rms_norm_rows(x_.data() + (size_t)first * E, model_.output_norm().data, xn_.data(), n_out, E,
                  hp.rms_eps);
    const weight& out_w = model_.output();
    matmul_prepare(xn_.data(), n_out, E, out_w.type, &in_a_, pool_);
    matmul(out_w, in_a_, logits, pool_);
}

}  // namespace kvrt
