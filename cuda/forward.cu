// The CUDA backend's forward pass (cpp/gpu_forward.h): device copies of the
// weights in their file types, the device KV cache in the CPU streams' packed
// layouts, scratch for n_batch tokens, and context::forward_batch's sequence
// of ops on one stream. Decode (one token) runs the matvec kernels; batches
// of more than 8 tokens use cuBLAS GEMMs when the build links cuBLAS. A
// decode step is one CUDA graph, captured on first use and replayed.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "common.cuh"
#include "cpu/ops.h"
#include "gpu_forward.h"
#include "kv_formats.h"

namespace kvrt {

namespace {

#if defined(KVRT_CUBLAS)
constexpr int kGemmMinTokens = 9;  // batches of this many tokens or more go through cuBLAS
#endif

// A device allocation freed with its owner.
struct dev_buf {
    void* p = nullptr;
    dev_buf() = default;
    explicit dev_buf(size_t bytes) {
        if (bytes) KVRT_CUDA_CHECK(cudaMalloc(&p, bytes));
    }
    dev_buf(const dev_buf&) = delete;
    dev_buf& operator=(const dev_buf&) = delete;
    ~dev_buf() {
        if (p) cudaFree(p);
    }
    template <class T> T* as() const { return static_cast<T*>(p); }
};

struct dev_layer {
    const float *attn_norm = nullptr, *ffn_norm = nullptr;
    const float *bq = nullptr, *bk = nullptr, *bv = nullptr, *q_norm = nullptr, *k_norm = nullptr;
    dev_weight wq, wk, wv, wo, w_gate, w_up, w_down;
    cuda_kv_stream k, v;
};

class cuda_forward final : public gpu_forward {
public:
    cuda_forward(const model& m, int n_ctx, int n_batch, kv_type type_k, kv_type type_v,
                 int rope_offset, const kv_cache* kv)
        : m_(m), n_ctx_(n_ctx), n_batch_(n_batch), rope_offset_(rope_offset) {
        const hparams& hp = m.hp();
        for (const kv_type& t : {type_k, type_v})
            if (!cuda_kv_kind_supported(t.kind))
                throw error("KV format " + kv_type_name(t) + " is not supported on CUDA yet (CUDA has " +
                            cuda_kv_kinds_supported() + "; use --device cpu for the others)");
        pca_ = type_k.kind == KV_KIND_PCA || type_v.kind == KV_KIND_PCA;
        if (pca_ && (type_k.kind != KV_KIND_PCA || type_v.kind != KV_KIND_PCA))
            throw error("KV format " + kv_type_name(type_k.kind == KV_KIND_PCA ? type_k : type_v) +
                        " on CUDA needs pca for both keys and values (use --device cpu to mix)");
        if (type_k.window != type_v.window || type_k.window8 != type_v.window8)
            throw error("KV format " + kv_type_name(type_k) + " / " + kv_type_name(type_v) +
                        ": on CUDA keys and values take the same recent window (use --device cpu to mix)");
        if (pca_ && (!kv || (int)kv->pca_heads(false).size() != hp.n_layer ||
                     (int)kv->pca_heads(true).size() != hp.n_layer))
            throw error("CUDA: KV format pca needs the calibration's quantizers");
        const int hd = hp.head_dim;
        if (hd % 8 != 0 || hd > 256 || 32 % (hd / 8) != 0)
            throw error("CUDA: head_dim " + std::to_string(hd) + " is not supported (32, 64, 128 or 256)");
        KVRT_CUDA_CHECK(cudaSetDevice(0));
        cudaDeviceProp prop;
        KVRT_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
        n_sm_ = prop.multiProcessorCount;
        gpu_name_ = prop.name;
        KVRT_CUDA_CHECK(cudaStreamCreate(&stream_));
#if defined(KVRT_CUBLAS)
        KVRT_CUBLAS_CHECK(cublasCreate(&cublas_));
#endif
        tok_embd_ = upload(m.tok_embd());
        output_ = upload(m.output());
        output_norm_ = upload(m.output_norm());
        layers_.resize(hp.n_layer);
        for (int il = 0; il < hp.n_layer; ++il) {
            const layer_weights& L = m.layers()[il];
            dev_layer& D = layers_[il];
            D.attn_norm = upload(L.attn_norm);
            D.ffn_norm = upload(L.ffn_norm);
            D.bq = upload(L.bq);
            D.bk = upload(L.bk);
            D.bv = upload(L.bv);
            D.q_norm = upload(L.q_norm);
            D.k_norm = upload(L.k_norm);
            D.wq = upload(L.wq);
            D.wk = upload(L.wk);
            D.wv = upload(L.wv);
            D.wo = upload(L.wo);
            D.w_gate = upload(L.w_gate);
            D.w_up = upload(L.w_up);
            D.w_down = upload(L.w_down);
            D.k = pca_ ? alloc_pca(kv->pca_heads(false)[il], type_k) : alloc_stream(type_k, il, true);
            D.v = pca_ ? alloc_pca(kv->pca_heads(true)[il], type_v) : alloc_stream(type_v, il, false);
        }
        rope_table rt;
        rt.init(hp);
        rope_.neox = hp.rope == ROPE_KIND_NEOX;
        rope_.head_dim = hd;
        rope_.n_rot = hp.n_rot;
        rope_.inv_freq = upload_floats(rt.inv_freq.data(), rt.inv_freq.size());
        ap_.n_head = hp.n_head;
        ap_.n_head_kv = hp.n_head_kv;
        ap_.head_dim = hd;
        ap_.sliding_window = hp.sliding_window;

        const size_t B = n_batch;
        const size_t QD = (size_t)hp.n_head * hd, KVD = (size_t)hp.n_head_kv * hd;
        x_ = scratch(B * hp.n_embd);
        xn_ = scratch(B * hp.n_embd);
        q_ = scratch(B * QD);
        k_ = scratch(B * KVD);
        v_ = scratch(B * KVD);
        att_ = scratch(B * QD);
        gate_ = scratch(B * hp.n_ff);
        up_ = scratch(B * hp.n_ff);
        logits_ = scratch(B * hp.n_vocab);
        partial_ = scratch(cuda_attention_partial_floats(ap_, n_batch, n_ctx, n_sm_, pca_));
        if (pca_) qprep_ = scratch(cuda_attention_pca_qprep_floats(n_batch, hp.n_head, hd));
        bufs_.push_back(std::make_unique<dev_buf>((B + 1) * sizeof(int32_t)));
        tokens_ = bufs_.back()->as<int32_t>();
        KVRT_CUDA_CHECK(cudaMallocHost(&h_step_, 2 * sizeof(int32_t)));
        if (cuda_env_off("KVRT_CUDA_GRAPH")) use_graph_ = false;
        bool q16 = true;
        if (const char* e = std::getenv("KVRT_CUDA_MATVEC")) {
            q16 = std::string(e) == "q16";
            if (!q16 && std::string(e) != "f32")
                throw error("KVRT_CUDA_MATVEC must be q16 or f32, not '" + std::string(e) + "'");
        }
        if (q16) {
            bufs_.push_back(std::make_unique<dev_buf>(cuda_q16_bytes((int)B, (int64_t)max_cols_)));
            q16_ = bufs_.back()->p;
        }
#if defined(KVRT_CUBLAS)
        if (const char* e = std::getenv("KVRT_CUDA_GEMM")) {
            if (std::string(e) == "f32") gemm_ = GEMM_F32;
            else if (std::string(e) != "f16")
                throw error("KVRT_CUDA_GEMM must be f32 or f16, not '" + std::string(e) + "'");
        }
        if (n_batch >= kGemmMinTokens) {
            bufs_.push_back(std::make_unique<dev_buf>(max_weight_elems_ * sizeof(float)));
            wbuf_ = bufs_.back()->p;
            bufs_.push_back(std::make_unique<dev_buf>(B * max_cols_ * sizeof(__half)));
            xbuf_ = bufs_.back()->p;
        }
#endif
    }

    ~cuda_forward() override {
        if (graph_exec_) cudaGraphExecDestroy(graph_exec_);
        if (h_step_) cudaFreeHost(h_step_);
#if defined(KVRT_CUBLAS)
        if (cublas_) cublasDestroy(cublas_);
#endif
        bufs_.clear();
        if (stream_) cudaStreamDestroy(stream_);
    }

    std::string describe() const override {
        char buf[256];
        std::snprintf(buf, sizeof buf,
                      "CUDA: %s, %.1f MiB of weights, %.1f MiB of KV cache, %s batch GEMMs",
                      gpu_name_.c_str(), weight_bytes_ / 1048576.0, kv_bytes_ / 1048576.0,
#if defined(KVRT_CUBLAS)
                      gemm_ == GEMM_F16 ? "f16" : "f32"
#else
                      "no"
#endif
        );
        return buf;
    }

    void forward(const int32_t* tokens, int n, int pos0, float* logits, int n_logits) override {
        const int n_vocab = m_.hp().n_vocab;
        cudaStream_t s = stream_;
        if (n == 1 && use_graph_) {
            // Decode: one graph of the whole step, captured once and replayed
            // with the token and position staged in device memory.
            *h_step_ = tokens[0];
            h_step_[1] = pos0;
            KVRT_CUDA_CHECK(cudaMemcpyAsync(tokens_, h_step_, sizeof(int32_t) * 2,
                                            cudaMemcpyHostToDevice, s));
            if (!graph_exec_) capture_decode();
            KVRT_CUDA_CHECK(cudaGraphLaunch(graph_exec_, s));
        } else {
            KVRT_CUDA_CHECK(cudaMemcpyAsync(tokens_, tokens, sizeof(int32_t) * n,
                                            cudaMemcpyHostToDevice, s));
            enqueue(n, pos0, nullptr, 0, n_logits);
        }
        if (n_logits > 0)
            KVRT_CUDA_CHECK(cudaMemcpyAsync(logits, logits_, sizeof(float) * n_logits * n_vocab,
                                            cudaMemcpyDeviceToHost, s));
        KVRT_CUDA_CHECK(cudaStreamSynchronize(s));
    }

private:
    // Every kernel of one forward call, on stream_. Positions are pos0 +
    // *pos_dev when pos_dev is set (graph replay); split_len as cuda_attention.
    void enqueue(int n, int pos0, const int* pos_dev, int split_len, int n_logits) {
        const hparams& hp = m_.hp();
        const int E = hp.n_embd, HD = hp.head_dim;
        const int QD = hp.n_head * HD, KVD = hp.n_head_kv * HD;
        cudaStream_t s = stream_;
        cuda_get_rows(tok_embd_, tokens_, n, x_, s);
        for (int il = 0; il < hp.n_layer; ++il) {
            const dev_layer& L = layers_[il];
            norm(x_, L.attn_norm, n, L.wq);
            const dev_weight* qkv[3] = {&L.wq, &L.wk, &L.wv};
            float* const qkv_out[3] = {q_, k_, v_};
            mul_xn(qkv, qkv_out, 3, n);
            if (L.bq) cuda_add_bias_rows(q_, L.bq, n, QD, s);
            if (L.bk) cuda_add_bias_rows(k_, L.bk, n, KVD, s);
            if (L.bv) cuda_add_bias_rows(v_, L.bv, n, KVD, s);
            if (L.q_norm) cuda_rms_norm_rows(q_, L.q_norm, q_, (int64_t)n * hp.n_head, HD, hp.rms_eps, s);
            if (L.k_norm) cuda_rms_norm_rows(k_, L.k_norm, k_, (int64_t)n * hp.n_head_kv, HD, hp.rms_eps, s);
            // Float caches: the keys and values stored by the launch that turns them
            // (pca: turned by the launch that stores them, below).
            const bool stored = !pca_ && cuda_rope_stores(L.k, L.v);
            if (stored)
                cuda_rope_apply_store(q_, n, hp.n_head, rope_, pos0 + rope_offset_, s, pos_dev, k_, v_,
                                      L.k, L.v, pos0);
            else if (!pca_)
                cuda_rope_apply(q_, n, hp.n_head, rope_, pos0 + rope_offset_, s, pos_dev, k_, hp.n_head_kv);
            // The merge of the attention writes the o product's q16 codes.
            void* o_act = q16_for(L.wo, n, QD) && cuda_attention_writes_q16(HD) ? q16_ : nullptr;
            if (pca_) {
                // Keys and values stored (and both turned by rope) in the launch that turns the queries.
                cuda_attention_pca(L.k, L.v, q_, n, pos0, hp.n_head, hp.sliding_window, att_,
                                   partial_, qprep_, n_sm_, s, pos_dev, split_len, k_, v_, o_act,
                                   &rope_, rope_offset_);
            } else {
                if (!stored) {
                    cuda_kv_store(L.k, pos0, n, k_, s, pos_dev);
                    cuda_kv_store(L.v, pos0, n, v_, s, pos_dev);
                }
                cuda_attention(L.k, L.v, q_, n, pos0, ap_, att_, partial_, n_sm_, s, pos_dev, split_len,
                               o_act);
            }
            if (o_act) q16_of_ = att_;
            mul(L.wo, att_, n, x_, o_act != nullptr, true);  // the residual added in the product
            norm(x_, L.ffn_norm, n, L.w_gate);
            const dev_weight* gu[2] = {&L.w_gate, &L.w_up};
            float* const gu_out[2] = {gate_, up_};
            mul_xn(gu, gu_out, 2, n);
            const bool q16 = q16_for(L.w_down, n, hp.n_ff);
            cuda_swiglu(gate_, up_, gate_, n, hp.n_ff, s, q16 ? q16_ : nullptr);
            q16_of_ = q16 ? gate_ : nullptr;
            mul(L.w_down, gate_, n, x_, true, true);
        }
        if (n_logits > 0) {
            const int first = n - n_logits;
            norm(x_ + (size_t)first * E, output_norm_, n_logits, output_);
            mul(output_, xn_, n_logits, logits_, true);
        }
    }

    // The decode step as a graph: token from tokens_[0], position from
    // tokens_[1]; attention split for the whole context.
    void capture_decode() {
        cudaGraph_t g = nullptr;
        KVRT_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
        try {
            enqueue(1, 0, tokens_ + 1, n_ctx_, 1);
        } catch (...) {
            cudaStreamEndCapture(stream_, &g);
            if (g) cudaGraphDestroy(g);
            throw;
        }
        KVRT_CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
        const cudaError_t e = cudaGraphInstantiate(&graph_exec_, g, 0);
        cudaGraphDestroy(g);
        KVRT_CUDA_CHECK(e);
    }

    // Whether mul(w, ...) of n tokens reads q16 codes of its input (cols wide).
    bool q16_for(const dev_weight& w, int n, int64_t cols) const {
#if defined(KVRT_CUBLAS)
        if (n >= kGemmMinTokens && wbuf_) return false;
#endif
        return q16_ && cuda_matvec_takes_q16(w.type) && cols % 32 == 0;
    }

    // xn_ = RMSNorm of n rows of x with weight w; where `next` (the weight
    // multiplied next) reads q16 codes, they are made in the same launch.
    void norm(const float* x, const float* w, int n, const dev_weight& next) {
        const int E = m_.hp().n_embd;
        const bool q16 = q16_for(next, n, E);
        cuda_rms_norm_rows(x, w, xn_, n, E, m_.hp().rms_eps, stream_, q16 ? q16_ : nullptr);
        q16_of_ = q16 ? xn_ : nullptr;
    }

    // out = w x (add: out += w x). same_x: x is the input of the previous
    // mul (or of norm or swiglu, which made its codes), unchanged since, so
    // q16 codes made from it then still hold.
    void mul(const dev_weight& w, const float* x, int n, float* out, bool same_x = false,
             bool add = false) {
        if (!same_x) q16_of_ = nullptr;
#if defined(KVRT_CUBLAS)
        if (n >= kGemmMinTokens && wbuf_) {
            cuda_matmul_gemm(w, x, n, out, gemm_, wbuf_, xbuf_, cublas_, stream_, add);
            return;
        }
#endif
        const bool q16 = q16_for(w, n, w.cols);
        if (q16 && q16_of_ != x) {
            cuda_quantize_q16(x, n, w.cols, q16_, stream_);
            q16_of_ = x;
        }
        cuda_matvec(w, x, n, out, stream_, q16 ? q16_ : nullptr, add);
    }

    // ws[k] xn_ into outs[k] (xn_ just made by norm): in one launch where
    // the weights allow.
    void mul_xn(const dev_weight* const* ws, float* const* outs, int count, int n) {
        if (q16_of_ == xn_ && cuda_matvec_multi(ws, outs, count, n, stream_, q16_)) return;
        for (int k = 0; k < count; ++k) mul(*ws[k], xn_, n, outs[k], true);
    }

    dev_weight upload(const weight& w) {
        dev_weight d;
        if (!w.present()) return d;
        if (!cuda_weight_type_supported(w.type))
            throw error(std::string("CUDA: tensor ") + (w.name ? w.name : "?") + " has type " +
                        ggml_type_geometry(w.type).name + ", not supported on CUDA yet (CUDA reads " +
                        cuda_weight_types_supported() + ")");
        d.type = w.type;
        d.rows = w.rows;
        d.cols = w.cols;
        d.row_bytes = w.row_bytes;
        if (w.type != GGML_TYPE_F32 && w.type != GGML_TYPE_F16 && w.type != GGML_TYPE_BF16 && w.cols % 32)
            throw error("CUDA: tensor with a partial block");
        max_weight_elems_ = std::max<size_t>(max_weight_elems_, (size_t)w.rows * w.cols);
        max_cols_ = std::max<size_t>(max_cols_, (size_t)w.cols);
        auto it = uploaded_.find(w.data);  // tied output and embedding share one copy
        if (it != uploaded_.end()) {
            d.d = static_cast<const uint8_t*>(it->second);
            return d;
        }
        const size_t bytes = (size_t)w.rows * w.row_bytes;
        bufs_.push_back(std::make_unique<dev_buf>(bytes));
        cuda_upload_weight(d, w.data, bufs_.back()->as<uint8_t>());
        weight_bytes_ += bytes;
        uploaded_[w.data] = bufs_.back()->p;
        d.d = bufs_.back()->as<uint8_t>();
        return d;
    }

    const float* upload(const vec_f32& v) {
        return v.present() ? upload_floats(v.data, (size_t)v.n) : nullptr;
    }

    const float* upload_floats(const float* p, size_t n) {
        bufs_.push_back(std::make_unique<dev_buf>(n * sizeof(float)));
        KVRT_CUDA_CHECK(cudaMemcpy(bufs_.back()->p, p, n * sizeof(float), cudaMemcpyHostToDevice));
        return bufs_.back()->as<float>();
    }

    float* scratch(size_t n) {
        bufs_.push_back(std::make_unique<dev_buf>(n * sizeof(float)));
        return bufs_.back()->as<float>();
    }

    // Layer il's key or value stream (rot: the signs kv_cache's stream takes).
    cuda_kv_stream alloc_stream(const kv_type& t, int il, bool is_key) {
        const hparams& hp = m_.hp();
        cuda_kv_stream st = cuda_kv_stream_shape(t, hp.n_head_kv, hp.head_dim, is_key, n_ctx_);
        if (t.kind == KV_KIND_ROT) {
            const std::vector<float> signs = kv_random_signs(hp.head_dim, kv_stream_seed(il, is_key));
            st.signs = upload_floats(signs.data(), signs.size());
        }
        st.d = zeroed(cuda_kv_data_bytes(st, n_ctx_));
        if (st.cmajor) {
            st.stage = zeroed(cuda_kv_stage_bytes(st));
            st.len = reinterpret_cast<int*>(zeroed(sizeof(int)));
        }
        return st;
    }

    // Device memory of the cache, zeroed (counted in kv_bytes_).
    uint8_t* zeroed(size_t bytes) {
        bufs_.push_back(std::make_unique<dev_buf>(bytes));
        KVRT_CUDA_CHECK(cudaMemset(bufs_.back()->p, 0, bytes));
        kv_bytes_ += bytes;
        return bufs_.back()->as<uint8_t>();
    }

    // A pca stream's device arrays and calibration (kv_pca.cu), laid out as
    // the CPU stream's.
    cuda_kv_stream alloc_pca(const std::vector<kv_pca_head>& heads, const kv_type& t) {
        pca_streams_.push_back(
            std::make_unique<cuda_pca_stream>(heads, n_ctx_, t.window, t.window8, std::max(n_batch_, 1)));
        kv_bytes_ += pca_streams_.back()->bytes();
        return pca_streams_.back()->view();
    }

    const model& m_;
    int n_ctx_, n_batch_, rope_offset_;
    bool pca_ = false;  // keys and values in pca
    std::vector<std::unique_ptr<cuda_pca_stream>> pca_streams_;
    int n_sm_ = 1;
    std::string gpu_name_;
    cudaStream_t stream_ = nullptr;
#if defined(KVRT_CUBLAS)
    cublasHandle_t cublas_ = nullptr;
#endif
    void *wbuf_ = nullptr, *xbuf_ = nullptr;
    void* q16_ = nullptr;            // matvec inputs as q16 codes ($KVRT_CUDA_MATVEC=f32: none)
    const float* q16_of_ = nullptr;  // the x they were made from
    gemm_precision gemm_ = GEMM_F16;  // tensor cores; $KVRT_CUDA_GEMM=f32: f32 products
    size_t max_weight_elems_ = 0, max_cols_ = 0;
    size_t weight_bytes_ = 0, kv_bytes_ = 0;
    std::vector<std::unique_ptr<dev_buf>> bufs_;
    std::map<const void*, void*> uploaded_;
    dev_weight tok_embd_, output_;
    const float* output_norm_ = nullptr;
    std::vector<dev_layer> layers_;
    cuda_rope rope_;
    cuda_attn_params ap_;
    float *x_, *xn_, *q_, *k_, *v_, *att_, *gate_, *up_, *logits_, *partial_;
    float* qprep_ = nullptr;  // pca: queries turned into the key basis
    int32_t* tokens_ = nullptr;  // n_batch + 1: a decode step's token and position
    int32_t* h_step_ = nullptr;  // pinned staging of those two
    bool use_graph_ = true;      // $KVRT_CUDA_GRAPH=0: decode launches kernel by kernel
    cudaGraphExec_t graph_exec_ = nullptr;
};

}  // namespace

bool gpu_available(std::string* why) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        if (why)
            *why = e != cudaSuccess ? std::string("no CUDA GPU found (") + cudaGetErrorString(e) + ")"
                                    : "no CUDA GPU found";
        return false;
    }
    return true;
}

std::unique_ptr<gpu_forward> gpu_forward_create(const model& m, int n_ctx, int n_batch,
                                                kv_type type_k, kv_type type_v, int rope_offset,
                                                const kv_cache* kv) {
    std::string why;
    if (!gpu_available(&why)) throw error(why + "; use --device cpu");
    return std::make_unique<cuda_forward>(m, n_ctx, n_batch, type_k, type_v, rope_offset, kv);
}

}  // namespace kvrt
