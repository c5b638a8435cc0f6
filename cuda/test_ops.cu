// Single-op entry points for tests/test_cuda.py (declared in
// cpp/gpu_forward.h): upload the inputs, run one CUDA kernel, bring the
// result back, so each kernel is compared with its CPU twin on awkward shapes.
#include <string>
#include <vector>

#include "common.cuh"
#include "cpu/ops.h"
#include "gpu_forward.h"
#include "kv_formats.h"

namespace kvrt {

namespace {

void need_gpu() {
    std::string why;
    if (!gpu_available(&why)) throw error(why);
}

// Device copy of host data, freed on scope exit.
struct dev_copy {
    void* p = nullptr;
    dev_copy(const void* src, size_t bytes) {
        KVRT_CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
        if (src && bytes) KVRT_CUDA_CHECK(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice));
        else KVRT_CUDA_CHECK(cudaMemset(p, 0, bytes ? bytes : 1));
    }
    ~dev_copy() { cudaFree(p); }
    template <class T> T* as() const { return static_cast<T*>(p); }
};

template <class T>
std::vector<T> to_host(const dev_copy& d, size_t n) {
    std::vector<T> out(n);
    KVRT_CUDA_CHECK(cudaDeviceSynchronize());
    KVRT_CUDA_CHECK(cudaMemcpy(out.data(), d.p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return out;
}

}  // namespace

std::vector<float> gpu_test_matmul(ggml_type t, const uint8_t* w, int64_t rows, int64_t cols,
                                   const float* x, int n, int prefill) {
    need_gpu();
    const ggml_type_size g = ggml_type_geometry(t);
    if (!cuda_weight_type_supported(t))
        throw error(std::string("CUDA: weight type ") + g.name + " is not supported (CUDA reads " +
                    cuda_weight_types_supported() + ")");
    dev_weight dw;
    dw.type = t;
    dw.rows = rows;
    dw.cols = cols;
    dw.row_bytes = (size_t)cols / g.block_size * g.type_size;
    const bool add = prefill & 8;
    prefill &= 7;
    const std::vector<float> ones(add ? (size_t)n * rows : 0, 1.0f);
    dev_copy dwb(nullptr, dw.row_bytes * rows), dx(x, sizeof(float) * n * cols),
            dout(add ? ones.data() : nullptr, sizeof(float) * n * rows);
    cuda_upload_weight(dw, w, dwb.as<uint8_t>());
    dw.d = dwb.as<uint8_t>();
#if defined(KVRT_CUBLAS)
    if (prefill == 1 || prefill == 2) {
        const gemm_precision gemm = prefill == 2 ? GEMM_F16 : GEMM_F32;
        dev_copy wb(nullptr, sizeof(float) * rows * cols), xb(nullptr, sizeof(__half) * n * cols);
        cublasHandle_t h;
        KVRT_CUBLAS_CHECK(cublasCreate(&h));
        cuda_matmul_gemm(dw, dx.as<float>(), n, dout.as<float>(), gemm, wb.p, xb.p, h, 0, add);
        auto out = to_host<float>(dout, (size_t)n * rows);
        cublasDestroy(h);
        return out;
    }
#endif
    if (prefill == 3 || !cuda_matvec_takes_q16(t)) {
        cuda_matvec(dw, dx.as<float>(), n, dout.as<float>(), 0, nullptr, add);
        return to_host<float>(dout, (size_t)n * rows);
    }
    dev_copy act(nullptr, cuda_q16_bytes(n, cols));
    cuda_quantize_q16(dx.as<float>(), n, cols, act.p, 0);
    cuda_matvec(dw, dx.as<float>(), n, dout.as<float>(), 0, act.p, add);
    return to_host<float>(dout, (size_t)n * rows);
}

std::vector<uint8_t> gpu_test_q16_fused(int op, const float* a, const float* b, int64_t rows,
                                        int64_t n, float eps) {
    need_gpu();
    const size_t ny = (size_t)rows * n, qb = cuda_q16_bytes((int)rows, n);
    dev_copy da(a, sizeof(float) * ny), db(b, sizeof(float) * (op == 0 ? n : ny));
    dev_copy y1(nullptr, sizeof(float) * ny), y2(nullptr, sizeof(float) * ny);
    dev_copy fused(nullptr, qb), apart(nullptr, qb);
    if (op == 0) {
        cuda_rms_norm_rows(da.as<float>(), db.as<float>(), y1.as<float>(), rows, n, eps, 0, fused.p);
        cuda_rms_norm_rows(da.as<float>(), db.as<float>(), y2.as<float>(), rows, n, eps, 0);
    } else {
        cuda_swiglu(da.as<float>(), db.as<float>(), y1.as<float>(), rows, n, 0, fused.p);
        cuda_swiglu(da.as<float>(), db.as<float>(), y2.as<float>(), rows, n, 0);
    }
    cuda_quantize_q16(y2.as<float>(), (int)rows, n, apart.p, 0);
    std::vector<uint8_t> out;
    for (const dev_copy* d : {&fused, &apart}) {
        const auto h = to_host<uint8_t>(*d, qb);
        out.insert(out.end(), h.begin(), h.end());
    }
    for (const dev_copy* d : {&y1, &y2}) {
        const auto h = to_host<uint8_t>(*d, sizeof(float) * ny);
        out.insert(out.end(), h.begin(), h.end());
    }
    return out;
}

std::vector<float> gpu_test_rms_norm(const float* x, const float* w, int64_t n_rows, int64_t n,
                                     float eps) {
    need_gpu();
    dev_copy dx(x, sizeof(float) * n_rows * n), dw(w, sizeof(float) * n), dy(nullptr, sizeof(float) * n_rows * n);
    cuda_rms_norm_rows(dx.as<float>(), dw.as<float>(), dy.as<float>(), n_rows, n, eps, 0);
    return to_host<float>(dy, (size_t)(n_rows * n));
}

std::vector<float> gpu_test_rope(const model& m, const float* x, int n_tok, int n_heads, int pos0) {
    need_gpu();
    const hparams& hp = m.hp();
    rope_table rt;
    rt.init(hp);
    const size_t n = (size_t)n_tok * n_heads * hp.head_dim;
    dev_copy dx(x, sizeof(float) * n), df(rt.inv_freq.data(), sizeof(float) * rt.inv_freq.size());
    cuda_rope r;
    r.neox = hp.rope == ROPE_KIND_NEOX;
    r.head_dim = hp.head_dim;
    r.n_rot = hp.n_rot;
    r.inv_freq = df.as<float>();
    cuda_rope_apply(dx.as<float>(), n_tok, n_heads, r, pos0, 0);
    return to_host<float>(dx, n);
}

std::vector<float> gpu_test_swiglu(const float* g, const float* u, int64_t n) {
    need_gpu();
    dev_copy dg(g, sizeof(float) * n), du(u, sizeof(float) * n), dy(nullptr, sizeof(float) * n);
    cuda_swiglu(dg.as<float>(), du.as<float>(), dy.as<float>(), 1, n, 0);
    return to_host<float>(dy, (size_t)n);
}

std::vector<uint8_t> gpu_test_kv_encode(kv_type t, const float* x, int n, int n_head_kv,
                                        int head_dim, bool is_key) {
    need_gpu();
    cuda_kv_stream st = cuda_kv_stream_shape(t, n_head_kv, head_dim, is_key, n);
    if (st.cmajor) throw error("gpu_test_kv_encode: token-major formats only (affine keys: gpu_test_kv_encode_affine_keys)");
    const std::vector<float> signs = kv_random_signs(head_dim, 0);  // the test streams' seed
    dev_copy ds(signs.data(), sizeof(float) * signs.size());
    if (t.kind == KV_KIND_ROT) st.signs = ds.as<float>();
    const size_t bytes = (size_t)n * n_head_kv * st.rec;
    dev_copy dx(x, sizeof(float) * n * n_head_kv * head_dim), dd(nullptr, bytes);
    st.d = dd.as<uint8_t>();
    cuda_kv_store(st, 0, n, dx.as<float>(), 0);
    return to_host<uint8_t>(dd, bytes);
}

// The stores (pos0, n) of x's rows (row floats each) into st in turn, synchronised.
static void run_stores(const cuda_kv_stream& st, int n_ctx, size_t row, const std::vector<std::pair<int, int>>& stores,
                const float* x) {
    size_t rows = 0;
    for (const auto& sn : stores) rows += (size_t)sn.second;
    dev_copy dx(x, sizeof(float) * rows * row);
    size_t at = 0;
    for (const auto& sn : stores) {
        if (sn.first < 0 || sn.second < 0 || sn.first + sn.second > n_ctx)
            throw error("backend ops: a store outside the context");
        cuda_kv_store(st, sn.first, sn.second, dx.as<float>() + at * row, 0);
        at += (size_t)sn.second;
    }
    KVRT_CUDA_CHECK(cudaDeviceSynchronize());
}

std::vector<uint8_t> gpu_test_kv_encode_affine_keys(kv_type t, int n_ctx, int n_head_kv, int head_dim,
                                                    const std::vector<std::pair<int, int>>& stores,
                                                    const float* x) {
    need_gpu();
    cuda_kv_stream st = cuda_kv_stream_shape(t, n_head_kv, head_dim, true, n_ctx);
    if (!st.cmajor) throw error("gpu_test_kv_encode_affine_keys: an affine format");
    const size_t data = cuda_kv_data_bytes(st, n_ctx), stage = cuda_kv_stage_bytes(st);
    dev_copy dd(nullptr, data), ds(nullptr, stage), dl(nullptr, sizeof(int));
    st.d = dd.as<uint8_t>();
    st.stage = ds.as<uint8_t>();
    st.len = dl.as<int>();
    run_stores(st, n_ctx, (size_t)n_head_kv * head_dim, stores, x);
    std::vector<uint8_t> out = to_host<uint8_t>(dd, data);
    const std::vector<uint8_t> s = to_host<uint8_t>(ds, stage);
    out.insert(out.end(), s.begin(), s.end());
    return out;
}

std::vector<float> gpu_test_attention(kv_type type_k, kv_type type_v, const float* q,
                                      const float* k, const float* v, int n_tok, int pos0,
                                      int n_head, int n_head_kv, int head_dim, int sliding_window) {
    need_gpu();
    const int len = pos0 + n_tok;
    cuda_kv_stream ks = cuda_kv_stream_shape(type_k, n_head_kv, head_dim, true, len);
    cuda_kv_stream vs = cuda_kv_stream_shape(type_v, n_head_kv, head_dim, false, len);
    const std::vector<float> signs = kv_random_signs(head_dim, 0);  // the test streams' seed
    dev_copy ds(signs.data(), sizeof(float) * signs.size());
    if (type_k.kind == KV_KIND_ROT) ks.signs = ds.as<float>();
    if (type_v.kind == KV_KIND_ROT) vs.signs = ds.as<float>();
    const size_t kvn = (size_t)len * n_head_kv * head_dim;
    dev_copy dk(k, sizeof(float) * kvn), dv(v, sizeof(float) * kvn);
    dev_copy kb(nullptr, cuda_kv_data_bytes(ks, len)), vb(nullptr, cuda_kv_data_bytes(vs, len));
    dev_copy kst(nullptr, cuda_kv_stage_bytes(ks)), klen(nullptr, sizeof(int));
    ks.d = kb.as<uint8_t>();
    vs.d = vb.as<uint8_t>();
    if (ks.cmajor) {
        ks.stage = kst.as<uint8_t>();
        ks.len = klen.as<int>();
    }
    cuda_kv_store(ks, 0, len, dk.as<float>(), 0);
    cuda_kv_store(vs, 0, len, dv.as<float>(), 0);
    cuda_attn_params p;
    p.n_head = n_head;
    p.n_head_kv = n_head_kv;
    p.head_dim = head_dim;
    p.sliding_window = sliding_window;
    int n_sm = 1;
    KVRT_CUDA_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, 0));
    const size_t qn = (size_t)n_tok * n_head * head_dim;
    dev_copy dq(q, sizeof(float) * qn), dout(nullptr, sizeof(float) * qn);
    dev_copy part(nullptr, sizeof(float) * cuda_attention_partial_floats(p, n_tok, len, n_sm));
    cuda_attention(ks, vs, dq.as<float>(), n_tok, pos0, p, dout.as<float>(), part.as<float>(), n_sm, 0);
    return to_host<float>(dout, qn);
}

std::vector<uint8_t> gpu_test_kv_encode_pca(const std::vector<kv_pca_head>& heads, int n_ctx,
                                            const std::vector<std::pair<int, int>>& stores,
                                            const float* x) {
    need_gpu();
    cuda_pca_stream st(heads, n_ctx);
    const cuda_kv_stream view = st.view();
    run_stores(view, n_ctx, heads.size() * heads[0].mean.size(), stores, x);
    std::vector<uint8_t> out(st.bytes());
    KVRT_CUDA_CHECK(cudaMemcpy(out.data(), view.pca.codes, st.code_bytes(), cudaMemcpyDeviceToHost));
    KVRT_CUDA_CHECK(cudaMemcpy(out.data() + st.code_bytes(), view.pca.scale, st.scale_bytes(),
                               cudaMemcpyDeviceToHost));
    KVRT_CUDA_CHECK(cudaMemcpy(out.data() + st.code_bytes() + st.scale_bytes(), view.pca.sinks,
                               st.sink_bytes(), cudaMemcpyDeviceToHost));
    return out;
}

std::vector<float> gpu_test_attention_pca(const std::vector<kv_pca_head>& heads_k,
                                          const std::vector<kv_pca_head>& heads_v, const float* q,
                                          const float* k, const float* v, int n_tok, int pos0,
                                          int n_head, int sliding_window, int window, int window8) {
    need_gpu();
    const int len = pos0 + n_tok, n_head_kv = (int)heads_k.size();
    const int head_dim = (int)heads_k[0].mean.size();
    cuda_pca_stream ks(heads_k, len, window, window8, len), vs(heads_v, len, window, window8, len);
    const std::vector<std::pair<int, int>> stores = {{0, pos0}, {pos0, n_tok}};
    run_stores(ks.view(), len, (size_t)n_head_kv * head_dim, stores, k);
    run_stores(vs.view(), len, (size_t)n_head_kv * head_dim, stores, v);
    cuda_attn_params p;
    p.n_head = n_head;
    p.n_head_kv = n_head_kv;
    p.head_dim = head_dim;
    p.sliding_window = sliding_window;
    int n_sm = 1;
    KVRT_CUDA_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, 0));
    const size_t qn = (size_t)n_tok * n_head * head_dim;
    dev_copy dq(q, sizeof(float) * qn), dout(nullptr, sizeof(float) * qn);
    dev_copy part(nullptr, sizeof(float) * cuda_attention_partial_floats(p, n_tok, len, n_sm, true));
    dev_copy qprep(nullptr, sizeof(float) * cuda_attention_pca_qprep_floats(n_tok, n_head, head_dim));
    cuda_attention_pca(ks.view(), vs.view(), dq.as<float>(), n_tok, pos0, n_head, sliding_window,
                       dout.as<float>(), part.as<float>(), qprep.as<float>(), n_sm, 0, nullptr, 0);
    return to_host<float>(dout, qn);
}

}  // namespace kvrt
