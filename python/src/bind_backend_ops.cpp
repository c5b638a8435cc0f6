// kvrt._core backend-ops functions: each op of the forward pass on the CPU
// (the reference) and on CUDA (cpp/gpu_forward.h), over the same inputs, so
// tests/test_cuda.py compares them on awkward shapes; the pca ones take the
// per-head quantizers as arrays. The CUDA ones raise
// "kvrt was built without CUDA ..." in builds without it.
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <vector>

#include "bindings.h"
#include "common.h"
#include "cpu/ops.h"
#include "gpu_forward.h"
#include "kv_cache.h"
#include "quants.h"

namespace {

using bytes_in = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using floats_nd = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;

template <class T>
nb::ndarray<nb::numpy, T, nb::ndim<1>> to_numpy(std::vector<T>&& v) {
    auto* p = new std::vector<T>(std::move(v));
    nb::capsule owner(p, [](void* q) noexcept { delete (std::vector<T>*)q; });
    return nb::ndarray<nb::numpy, T, nb::ndim<1>>(p->data(), {p->size()}, owner);
}

void need(bool ok, const char* what) {
    if (!ok) throw kvrt::error(std::string("backend ops: ") + what);
}

kvrt::weight make_weight(int type, const bytes_in& w, int64_t rows, int64_t cols) {
    const ggml_type_size g = ggml_type_geometry((uint32_t)type);
    need(g.block_size > 0 && cols % g.block_size == 0, "cols must be whole blocks of the type");
    kvrt::weight wt;
    wt.type = (ggml_type)type;
    wt.rows = rows;
    wt.cols = cols;
    wt.row_bytes = kvrt::quants_row_size(wt.type, cols);
    need(w.size() == wt.row_bytes * (size_t)rows, "weight bytes do not match rows x cols");
    wt.data = w.data();
    return wt;
}

// The bytes the CPU stream of format t holds after storing x
// [n][n_head_kv*head_dim] (token-major formats: f32, f16, q8_0, q4_0, rot,
// affine values).
std::vector<uint8_t> cpu_kv_encode(const kvrt::kv_type& t, const float* x, int n, int n_head_kv,
                                   int hd, bool is_key) {
    auto s = kvrt::kv_stream_create(t, is_key, n, n_head_kv, hd);
    s->store(0, n, x);
    std::vector<uint8_t> out;
    for (int pos = 0; pos < n; ++pos) {
        size_t len = 0;
        const uint8_t* b = s->token_bytes(pos, &len);
        if (!b) throw kvrt::error("backend ops: kv_encode covers token-major formats only");
        out.insert(out.end(), b, b + len);
    }
    return out;
}

// Stores (pos0, n) inside n_ctx, and x holding their rows of w floats.
void check_stores(const std::vector<std::pair<int, int>>& stores, int n_ctx, size_t x_size, size_t w) {
    size_t rows = 0;
    for (const auto& sn : stores) {
        need(sn.first >= 0 && sn.second >= 0 && sn.first + sn.second <= n_ctx, "a store outside the context");
        rows += (size_t)sn.second;
    }
    need(x_size == rows * w, "x must hold the stores' rows of n_head_kv*head_dim");
}

// The CPU stream's packed_bytes parts 0 .. n_parts-1 after the stores in turn.
std::vector<uint8_t> cpu_store_parts(kvrt::kv_stream& s, const std::vector<std::pair<int, int>>& stores,
                                     const float* x, size_t w, int n_parts) {
    size_t at = 0;
    for (const auto& sn : stores) {
        s.store(sn.first, sn.second, x + at * w);
        at += (size_t)sn.second;
    }
    std::vector<uint8_t> out;
    for (int part = 0; part < n_parts; ++part) {
        size_t len = 0;
        const uint8_t* b = s.packed_bytes(part, &len);
        out.insert(out.end(), b, b + len);
    }
    return out;
}

// pca quantizers from (basis (nh, hd, hd), mean, sigma (nh, hd), bits (nh, hd)
// uint8, lo, step (nh, hd), rope_mean (nh, hd) or empty, rope_freq (nf),
// pair_stride, pair_gap).
std::vector<kvrt::kv_pca_head> pca_heads(const nb::tuple& t) {
    need(t.size() == 10, "pca heads: (basis, mean, sigma, bits, lo, step, rope_mean, rope_freq, "
                         "pair_stride, pair_gap)");
    const auto basis = nb::cast<floats_nd>(t[0]), mean = nb::cast<floats_nd>(t[1]),
               sigma = nb::cast<floats_nd>(t[2]), lo = nb::cast<floats_nd>(t[4]),
               step = nb::cast<floats_nd>(t[5]), rmean = nb::cast<floats_nd>(t[6]),
               rfreq = nb::cast<floats_nd>(t[7]);
    const auto bits = nb::cast<nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>>(t[3]);
    need(basis.ndim() == 3 && basis.shape(1) == basis.shape(2), "pca heads: basis (nh, hd, hd)");
    const size_t nh = basis.shape(0), hd = basis.shape(1);
    for (const floats_nd* a : {&mean, &sigma, &lo, &step})
        need(a->size() == nh * hd, "pca heads: mean, sigma, lo, step must be (nh, hd)");
    need(bits.size() == nh * hd, "pca heads: bits must be (nh, hd)");
    need(rmean.size() == 0 || rmean.size() == nh * hd, "pca heads: rope_mean (nh, hd) or empty");
    std::vector<kvrt::kv_pca_head> heads(nh);
    for (size_t h = 0; h < nh; ++h) {
        kvrt::kv_pca_head& p = heads[h];
        p.basis.assign(basis.data() + h * hd * hd, basis.data() + (h + 1) * hd * hd);
        auto row = [&](const floats_nd& a) {
            return std::vector<float>(a.data() + h * hd, a.data() + (h + 1) * hd);
        };
        p.mean = row(mean);
        p.sigma = row(sigma);
        p.lo = row(lo);
        p.step = row(step);
        p.bits.assign(bits.data() + h * hd, bits.data() + (h + 1) * hd);
        if (rmean.size()) {
            p.rope_mean = row(rmean);
            p.rope_freq.assign(rfreq.data(), rfreq.data() + rfreq.size());
            p.pair_stride = nb::cast<int>(t[8]);
            p.pair_gap = nb::cast<int>(t[9]);
        }
    }
    return heads;
}

// The CPU reference of the attention bindings: keys and values of positions
// 0..len-1 stored in ks / vs, then the last n_tok positions' attention.
std::vector<float> cpu_attention(std::unique_ptr<kvrt::kv_stream> ks,
                                 std::unique_ptr<kvrt::kv_stream> vs, const float* q,
                                 const float* k, const float* v, int n_tok, int len, int n_head,
                                 int n_head_kv, int head_dim, int sliding_window, int first = 0) {
    // first > 0: two stores, [0, first) and the rest (a window's ring, then its batch).
    const size_t w = (size_t)n_head_kv * head_dim;
    if (first > 0) {
        ks->store(0, first, k);
        vs->store(0, first, v);
    }
    ks->store(first, len - first, k + first * w);
    vs->store(first, len - first, v + first * w);
    kvrt::attention_params ap;
    ap.n_head = n_head;
    ap.n_head_kv = n_head_kv;
    ap.head_dim = head_dim;
    ap.sliding_window = sliding_window;
    kvrt::attention_scratch scratch;
    kvrt::thread_pool pool(2);
    std::vector<float> out((size_t)n_tok * n_head * head_dim);
    kvrt::attention_forward(*ks, *vs, q, n_tok, len - n_tok, ap, out.data(), scratch, pool);
    return out;
}

}  // namespace

void init_backend_ops(nb::module_& m) {
    m.def("cuda_available", []() {
        std::string why;
        const bool ok = kvrt::gpu_available(&why);
        return std::make_pair(ok, why);
    });

    m.def("backend_matmul",
          [](const std::string& dev, int type, bytes_in w, int64_t rows, int64_t cols, floats_nd x,
             int prefill) {
              const kvrt::weight wt = make_weight(type, w, rows, cols);
              need(x.size() % (size_t)cols == 0, "x must be [n][cols]");
              const int n = (int)(x.size() / (size_t)cols);
              if (dev == "cuda")
                  return to_numpy(kvrt::gpu_test_matmul(wt.type, w.data(), rows, cols, x.data(), n, prefill));
              kvrt::thread_pool pool(2);
              kvrt::matmul_input in;
              kvrt::matmul_prepare(x.data(), n, cols, wt.type, &in, pool);
              std::vector<float> out((size_t)n * rows);
              kvrt::matmul(wt, in, out.data(), pool);
              return to_numpy(std::move(out));
          },
          nb::arg("device"), nb::arg("type"), nb::arg("w"), nb::arg("rows"), nb::arg("cols"),
          nb::arg("x"), nb::arg("prefill") = 0);

    m.def("cuda_q16_fused", [](int op, floats_nd a, floats_nd b, int64_t n, float eps) {
        need(n > 0 && a.size() % (size_t)n == 0, "a must be [rows][n]");
        need(b.size() == (op == 0 ? (size_t)n : a.size()), "b must be [n] (norm) or a's shape (swiglu)");
        const auto v = kvrt::gpu_test_q16_fused(op, a.data(), b.data(), (int64_t)(a.size() / n), n, eps);
        return nb::bytes(reinterpret_cast<const char*>(v.data()), v.size());
    });

    m.def("backend_rms_norm",
          [](const std::string& dev, floats_nd x, floats_nd w, float eps) {
              const int64_t n = (int64_t)w.size(), rows = n ? (int64_t)x.size() / n : 0;
              need(n > 0 && (size_t)(rows * n) == x.size(), "x must be [rows][len(w)]");
              if (dev == "cuda") return to_numpy(kvrt::gpu_test_rms_norm(x.data(), w.data(), rows, n, eps));
              std::vector<float> y(x.size());
              kvrt::rms_norm_rows(x.data(), w.data(), y.data(), rows, n, eps);
              return to_numpy(std::move(y));
          });

    m.def("backend_rope",
          [](const std::string& dev, const std::string& model_path, floats_nd x, int n_heads, int pos0) {
              auto mdl = kvrt::model::load(model_path);
              const int hd = mdl->hp().head_dim;
              need(n_heads > 0 && x.size() % ((size_t)n_heads * hd) == 0, "x must be [n][n_heads*head_dim]");
              const int n_tok = (int)(x.size() / ((size_t)n_heads * hd));
              if (dev == "cuda") return to_numpy(kvrt::gpu_test_rope(*mdl, x.data(), n_tok, n_heads, pos0));
              kvrt::rope_table rt;
              rt.init(mdl->hp());
              std::vector<float> y(x.data(), x.data() + x.size());
              for (int t = 0; t < n_tok; ++t) rt.apply(y.data() + (size_t)t * n_heads * hd, n_heads, pos0 + t);
              return to_numpy(std::move(y));
          });

    m.def("backend_swiglu", [](const std::string& dev, floats_nd g, floats_nd u) {
        need(g.size() == u.size(), "g and u differ in size");
        if (dev == "cuda") return to_numpy(kvrt::gpu_test_swiglu(g.data(), u.data(), (int64_t)g.size()));
        std::vector<float> y(g.size());
        kvrt::swiglu(g.data(), u.data(), y.data(), (int64_t)g.size());
        return to_numpy(std::move(y));
    });

    m.def("backend_kv_encode",
          [](const std::string& dev, const std::string& fmt, floats_nd x, int n_head_kv, int head_dim,
             bool values) {
              const kvrt::kv_type t = kvrt::kv_type_from_name(fmt);
              const size_t w = (size_t)n_head_kv * head_dim;
              need(w > 0 && x.size() % w == 0, "x must be [n][n_head_kv*head_dim]");
              const int n = (int)(x.size() / w);
              if (dev == "cuda")
                  return to_numpy(kvrt::gpu_test_kv_encode(t, x.data(), n, n_head_kv, head_dim, !values));
              return to_numpy(cpu_kv_encode(t, x.data(), n, n_head_kv, head_dim, !values));
          },
          nb::arg("dev"), nb::arg("fmt"), nb::arg("x"), nb::arg("n_head_kv"), nb::arg("head_dim"),
          nb::arg("values") = false);

    m.def("backend_kv_encode_affine_keys",
          [](const std::string& dev, const std::string& fmt, int n_ctx, int n_head_kv, int head_dim,
             std::vector<std::pair<int, int>> stores, floats_nd x) {
              const kvrt::kv_type t = kvrt::kv_type_from_name(fmt);
              need(t.kind == kvrt::KV_KIND_AFFINE, "an affine format");
              check_stores(stores, n_ctx, x.size(), (size_t)n_head_kv * head_dim);
              if (dev == "cuda")
                  return to_numpy(kvrt::gpu_test_kv_encode_affine_keys(t, n_ctx, n_head_kv, head_dim, stores,
                                                                       x.data()));
              return to_numpy(cpu_store_parts(*kvrt::kv_stream_create(t, true, n_ctx, n_head_kv, head_dim),
                                              stores, x.data(), (size_t)n_head_kv * head_dim, 2));
          });

    m.def("backend_kv_encode_pca",
          [](const std::string& dev, nb::tuple heads_t, int n_ctx,
             std::vector<std::pair<int, int>> stores, floats_nd x) {
              const std::vector<kvrt::kv_pca_head> heads = pca_heads(heads_t);
              const size_t w = heads.size() * heads[0].mean.size();
              check_stores(stores, n_ctx, x.size(), w);
              if (dev == "cuda") return to_numpy(kvrt::gpu_test_kv_encode_pca(heads, n_ctx, stores, x.data()));
              auto s = kvrt::kv_stream_create(kvrt::kv_type{kvrt::KV_KIND_PCA, 0, 0}, true, n_ctx,
                                              (int)heads.size(), (int)heads[0].mean.size(), 0, &heads);
              return to_numpy(cpu_store_parts(*s, stores, x.data(), w, 3));
          });

    m.def("backend_attention_pca",
          [](const std::string& dev, nb::tuple heads_k_t, nb::tuple heads_v_t, floats_nd q,
             floats_nd k, floats_nd v, int n_head, int sliding_window, int window, int window8) {
              const std::vector<kvrt::kv_pca_head> hk = pca_heads(heads_k_t), hv = pca_heads(heads_v_t);
              const int n_head_kv = (int)hk.size(), head_dim = (int)hk[0].mean.size();
              need((int)hv.size() == n_head_kv && (int)hv[0].mean.size() == head_dim,
                   "keys and values differ in heads");
              const size_t qw = (size_t)n_head * head_dim, kw = (size_t)n_head_kv * head_dim;
              need(q.size() % qw == 0 && k.size() % kw == 0 && k.size() == v.size(),
                   "q [n_tok][n_head*head_dim], k and v [len][n_head_kv*head_dim]");
              const int n_tok = (int)(q.size() / qw), len = (int)(k.size() / kw), pos0 = len - n_tok;
              need(pos0 >= 0, "more queries than positions");
              if (dev == "cuda")
                  return to_numpy(kvrt::gpu_test_attention_pca(hk, hv, q.data(), k.data(), v.data(),
                                                               n_tok, pos0, n_head, sliding_window, window,
                                                               window8));
              const kvrt::kv_type t{kvrt::KV_KIND_PCA, 0, 0, window, window8};
              return to_numpy(cpu_attention(kvrt::kv_stream_create(t, true, len, n_head_kv, head_dim, 0, &hk),
                                            kvrt::kv_stream_create(t, false, len, n_head_kv, head_dim, 0, &hv),
                                            q.data(), k.data(), v.data(), n_tok, len, n_head,
                                            n_head_kv, head_dim, sliding_window, pos0));
          },
          nb::arg("dev"), nb::arg("heads_k"), nb::arg("heads_v"), nb::arg("q"), nb::arg("k"), nb::arg("v"),
          nb::arg("n_head"), nb::arg("sliding_window"), nb::arg("window") = 0, nb::arg("window8") = 0);

    m.def("backend_attention",
          [](const std::string& dev, const std::string& type_k, const std::string& type_v,
             floats_nd q, floats_nd k, floats_nd v, int n_head, int n_head_kv, int head_dim,
             int sliding_window) {
              const kvrt::kv_type tk = kvrt::kv_type_from_name(type_k), tv = kvrt::kv_type_from_name(type_v);
              const size_t qw = (size_t)n_head * head_dim, kw = (size_t)n_head_kv * head_dim;
              need(qw > 0 && kw > 0 && q.size() % qw == 0 && k.size() % kw == 0 && k.size() == v.size(),
                   "q [n_tok][n_head*head_dim], k and v [len][n_head_kv*head_dim]");
              const int n_tok = (int)(q.size() / qw), len = (int)(k.size() / kw), pos0 = len - n_tok;
              need(pos0 >= 0, "more queries than positions");
              if (dev == "cuda")
                  return to_numpy(kvrt::gpu_test_attention(tk, tv, q.data(), k.data(), v.data(), n_tok,
                                                           pos0, n_head, n_head_kv, head_dim,
                                                           sliding_window));
              return to_numpy(cpu_attention(kvrt::kv_stream_create(tk, true, len, n_head_kv, head_dim),
                                            kvrt::kv_stream_create(tv, false, len, n_head_kv, head_dim),
                                            q.data(), k.data(), v.data(), n_tok, len, n_head,
                                            n_head_kv, head_dim, sliding_window));
          });
}
