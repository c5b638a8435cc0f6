#include "kv_cache.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common.h"
#include "kv_calib.h"
#include "kv_formats.h"
#include "quants.h"

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#endif

namespace kvrt {

static kv_type kv_type_from_base(const std::string& name) {
    auto bits_of = [&](size_t colon) -> float {
        const std::string num = name.substr(colon + 1);
        char* end = nullptr;
        const float b = std::strtof(num.c_str(), &end);
        if (num.empty() || *end != '\0') throw error("KV format '" + name + "': bad bit count");
        return b;
    };
    if (name == "f32") return KV_TYPE_F32;
    if (name == "f16") return KV_TYPE_F16;
    if (name == "q8_0") return {KV_KIND_Q8_0, 8, 0};
    if (name == "q4_0") return {KV_KIND_Q4_0, 4, 0};
    if (name == "pca") return {KV_KIND_PCA, 0, 0};
    if (name == "auto") return {KV_KIND_PCA, 0, -1};
    const size_t colon = name.find(':');
    if (colon != std::string::npos) {
        const std::string kind = name.substr(0, colon);
        const float b = bits_of(colon);
        if (kind == "affine" || kind == "rot") {
            if (b != 2 && b != 3 && b != 4 && b != 8)
                throw error("KV format '" + name + "': bits must be 2, 3, 4 or 8");
            return {kind == "affine" ? KV_KIND_AFFINE : KV_KIND_ROT, (int)b, 0};
        }
        if (kind == "pca") {
            if (!(b >= 0.5f && b <= 8.0f))
                throw error("KV format '" + name + "': average bits must be in 0.5..8");
            return {KV_KIND_PCA, 0, b};
        }
    }
    throw error("unknown KV cache format '" + name +
                "' (known: f32, f16, q8_0, q4_0, affine:B, rot:B with B in 2,3,4,8, pca, pca:B, "
                "pca:B:wN, auto)");
}

kv_type kv_type_from_name(const std::string& full) {
    // pca's recent window: a ":wN" (half y) or ":eN" (8-bit y) suffix.
    std::string base = full;
    int win[2] = {0, 0};
    for (;;) {
        const size_t c = base.rfind(':');
        if (c == std::string::npos || c + 1 >= base.size()) break;
        const char tag = base[c + 1];
        if (tag != 'w' && tag != 'e') break;
        const std::string num = base.substr(c + 2);
        char* end = nullptr;
        const long w = std::strtol(num.c_str(), &end, 10);
        if (num.empty() || *end != '\0' || w < 1 || w > 1024)
            throw error("KV format '" + full + "': the window must be 1..1024 positions");
        win[tag == 'e'] = (int)w;
        base.resize(c);
    }
    kv_type t = kv_type_from_base(base);
    if ((win[0] || win[1]) && (t.kind != KV_KIND_PCA || t.budget < 0))
        throw error("KV format '" + full + "': only pca takes a window (pca:B:wN or pca:B:eN)");
    if (win[0] && win[1])
        throw error("KV format '" + full + "': one window, :wN (halves) or :eN (8 bits)");
    t.window = win[0];
    t.window8 = win[1];
    return t;
}

std::string kv_type_name(const kv_type& t) {
    char buf[32];
    switch (t.kind) {
        case KV_KIND_F32: return "f32";
        case KV_KIND_F16: return "f16";
        case KV_KIND_Q8_0: return "q8_0";
        case KV_KIND_Q4_0: return "q4_0";
        case KV_KIND_AFFINE: return "affine:" + std::to_string(t.bits);
        case KV_KIND_ROT: return "rot:" + std::to_string(t.bits);
        case KV_KIND_PCA:
            if (t.budget < 0) return "auto";
            std::snprintf(buf, sizeof buf, "pca:%g", t.budget);
            return std::string(t.budget > 0 ? buf : "pca") +
                   (t.window > 0 ? ":w" + std::to_string(t.window) : "") +
                   (t.window8 > 0 ? ":e" + std::to_string(t.window8) : "");
    }
    return "?";
}

namespace {

// Plain float storage, token-major: [pos][head][dim]. Element access is
// templated so f32 and f16 share one implementation.
inline float kv_load(const float* p) { return *p; }
inline float kv_load(const uint16_t* p) { return fp16_to_fp32(*p); }

#if defined(__AVX2__) && defined(__F16C__)
inline __m256 kv_load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 kv_load8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

template <class T>
class kv_stream_plain final : public kv_stream {
public:
    kv_stream_plain(int n_ctx, int n_head_kv, int head_dim)
        : n_ctx_(n_ctx), n_head_kv_(n_head_kv), hd_(head_dim),
          size_((size_t)n_ctx * n_head_kv * head_dim), data_(new T[size_]) {}

    void store(int pos0, int n, const float* x) override {
        const size_t w = (size_t)n_head_kv_ * hd_;
        T* dst = data_.get() + (size_t)pos0 * w;
        for (size_t i = 0; i < (size_t)n * w; ++i) dst[i] = convert(x[i]);
    }

    // Each cached key/value is converted once and used by all n_rep query
    // heads of its group (grouped-query attention).
    void scores(int h, const float* q, int n_rep, int t0, int t1, float* s,
                int ld) const override {
        const size_t w = (size_t)n_head_kv_ * hd_;
        for (int t = t0; t < t1; ++t) {
            const T* k = data_.get() + (size_t)t * w + (size_t)h * hd_;
            dot_group(q, k, n_rep, s + (t - t0), ld);
        }
    }

    void accumulate(int h, const float* p, int n_rep, int t0, int t1, int ld,
                    float* out) const override {
        const size_t w = (size_t)n_head_kv_ * hd_;
        for (int t = t0; t < t1; ++t) {
            const T* v = data_.get() + (size_t)t * w + (size_t)h * hd_;
            axpy_group(p + (t - t0), ld, v, n_rep, out);
        }
    }

    size_t bytes() const override { return size_ * sizeof(T); }

    const uint8_t* token_bytes(int pos, size_t* n) const override {
        *n = (size_t)n_head_kv_ * hd_ * sizeof(T);
        return reinterpret_cast<const uint8_t*>(data_.get() + (size_t)pos * n_head_kv_ * hd_);
    }

    void decode(int pos, float* x) const override {
        const size_t w = (size_t)n_head_kv_ * hd_;
        for (size_t i = 0; i < w; ++i) x[i] = kv_load(data_.get() + (size_t)pos * w + i);
    }

private:
    static T convert(float x) {
        if constexpr (sizeof(T) == 2) return fp32_to_fp16(x);
        else return x;
    }

    // s[r * ld] = q_r . k for r < n_rep.
    void dot_group(const float* q, const T* k, int n_rep, float* s, int ld) const {
#if defined(__AVX2__) && defined(__F16C__)
        // Rows in runs of up to kRun (a prefill tile has many), each key
        // element converted once per run.
        constexpr int kRun = 12;
        if (hd_ % 8 == 0) {
            for (int r0 = 0; r0 < n_rep; r0 += kRun) {
                const int nr = std::min(kRun, n_rep - r0);
                const float* qr = q + (size_t)r0 * hd_;
                __m256 acc[kRun];
                for (int r = 0; r < nr; ++r) acc[r] = _mm256_setzero_ps();
                for (int d = 0; d < hd_; d += 8) {
                    const __m256 kv = kv_load8(k + d);
                    for (int r = 0; r < nr; ++r)
                        acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(qr + r * hd_ + d), kv, acc[r]);
                }
                for (int r = 0; r < nr; ++r) s[(size_t)(r0 + r) * ld] = hsum8(acc[r]);
            }
            return;
        }
#endif
        for (int r = 0; r < n_rep; ++r) {
            float sum = 0.0f;
            for (int d = 0; d < hd_; ++d) sum += q[r * hd_ + d] * kv_load(k + d);
            s[(size_t)r * ld] = sum;
        }
    }

    // out_r += p[r * ld] * v for r < n_rep.
    void axpy_group(const float* p, int ld, const T* v, int n_rep, float* out) const {
#if defined(__AVX2__) && defined(__F16C__)
        if (hd_ % 8 == 0) {
            for (int d = 0; d < hd_; d += 8) {
                const __m256 vv = kv_load8(v + d);
                for (int r = 0; r < n_rep; ++r) {
                    float* o = out + r * hd_ + d;
                    _mm256_storeu_ps(o, _mm256_fmadd_ps(_mm256_set1_ps(p[(size_t)r * ld]), vv,
                                                        _mm256_loadu_ps(o)));
                }
            }
            return;
        }
#endif
        for (int r = 0; r < n_rep; ++r)
            for (int d = 0; d < hd_; ++d) out[r * hd_ + d] += p[(size_t)r * ld] * kv_load(v + d);
    }

    int n_ctx_, n_head_kv_, hd_;
    size_t size_;
    // Not value-initialised: pages are committed as tokens are stored.
    std::unique_ptr<T[]> data_;
};

}  // namespace

std::unique_ptr<kv_stream> kv_stream_create(const kv_type& t, bool is_key, int n_ctx,
                                            int n_head_kv, int head_dim, uint32_t seed,
                                            const std::vector<kv_pca_head>* pca) {
    switch (t.kind) {
        case KV_KIND_F32: return std::make_unique<kv_stream_plain<float>>(n_ctx, n_head_kv, head_dim);
        case KV_KIND_F16:
            return std::make_unique<kv_stream_plain<uint16_t>>(n_ctx, n_head_kv, head_dim);
        case KV_KIND_PCA:
            if (!pca || (int)pca->size() != n_head_kv)
                throw error("KV format pca needs a calibration for every kv head");
            return kv_stream_create_pca(n_ctx, *pca, t.window, t.window8);
        default: return kv_stream_create_quantized(t, is_key, n_ctx, n_head_kv, head_dim, seed);
    }
}

kv_cache::kv_cache(int n_layer, int n_ctx, int n_head_kv, int head_dim, kv_type type_k,
                   kv_type type_v, const kv_calibration* calib)
    : n_layer_(n_layer), n_ctx_(n_ctx), n_head_kv_(n_head_kv), head_dim_(head_dim),
      type_k_(type_k), type_v_(type_v) {
    const bool pk = type_k.kind == KV_KIND_PCA, pv = type_v.kind == KV_KIND_PCA;
    kv_calibration::plan plan;
    if (pk || pv) {
        if (!calib) throw error("KV format pca needs a calibration file");
        const double wk = kv_pca_window_bits(type_k.window, type_k.window8, head_dim);
        const double wv = kv_pca_window_bits(type_v.window, type_v.window8, head_dim);
        if (pk && pv && type_k.budget == type_v.budget) {
            // One knapsack: each stream pays for its own window.
            plan = calib->solve(type_k.budget > 0 ? type_k.budget : calib->default_bits, true, true,
                                n_ctx, wk, wv);
        } else {
            // Different budgets for keys and values: two separate knapsacks.
            if (pk) plan.k = calib->solve(type_k.budget > 0 ? type_k.budget : calib->default_bits,
                                          true, false, n_ctx, wk, 0).k;
            if (pv) plan.v = calib->solve(type_v.budget > 0 ? type_v.budget : calib->default_bits,
                                          false, true, n_ctx, 0, wv).v;
        }
    }
    for (int i = 0; i < n_layer; ++i) {
        k_.push_back(kv_stream_create(type_k, true, n_ctx, n_head_kv, head_dim, kv_stream_seed(i, true),
                                      pk ? &plan.k[i] : nullptr));
        v_.push_back(kv_stream_create(type_v, false, n_ctx, n_head_kv, head_dim, kv_stream_seed(i, false),
                                      pv ? &plan.v[i] : nullptr));
    }
    pca_k_ = std::move(plan.k);
    pca_v_ = std::move(plan.v);
}

void kv_cache::set_stream(int layer, bool is_value, std::unique_ptr<kv_stream> s) {
    (is_value ? v_ : k_).at(layer) = std::move(s);
}

size_t kv_cache::bytes() const {
    size_t b = 0;
    for (int i = 0; i < n_layer_; ++i) b += k_[i]->bytes() + v_[i]->bytes();
    return b;
}

double kv_cache::bits_per_element() const {
    double elems = (double)n_ctx_ * n_layer_ * 2 * n_head_kv_ * head_dim_;
    return elems > 0 ? 8.0 * (double)bytes() / elems : 0.0;
}

std::string kv_cache::format_name() const {
    if (kv_type_name(type_k_) == kv_type_name(type_v_)) return kv_type_name(type_k_);
    return std::string("k=") + kv_type_name(type_k_) + ",v=" + kv_type_name(type_v_);
}

namespace {

// "keys 3.07 bits on 94 % of channels, 32 rope pairs": the average code
// bits of a pca plan's kept channels, the share of channels it keeps and
// (keys) the rotary pairs per head whose mean the attention adds back. The
// decode attention's work grows with the kept channels and pairs, not with
// the bits, so plans of one budget can differ in speed.
std::string pca_plan_shape(const char* name, const std::vector<std::vector<kv_pca_head>>& layers) {
    size_t kept = 0, total = 0, code_bits = 0, pairs = 0, heads = 0;
    for (const auto& layer : layers)
        for (const kv_pca_head& h : layer) {
            for (uint8_t b : h.bits) {
                kept += b > 0;
                code_bits += b;
            }
            total += h.bits.size();
            ++heads;
            for (int i = 0; i < (int)h.rope_freq.size(); ++i) pairs += kv_pca_pair_held(h, i);
        }
    if (!total) return "";
    char buf[128];
    int n = std::snprintf(buf, sizeof buf, "%s %.2f bits on %.0f %% of channels", name,
                          kept ? (double)code_bits / kept : 0.0, 100.0 * kept / total);
    if (pairs) std::snprintf(buf + n, sizeof buf - n, ", %.0f rope pairs", (double)pairs / heads);
    return buf;
}

}  // namespace

std::string kv_cache::summary_line() const {
    char buf[160];
    std::snprintf(buf, sizeof buf, "KV cache: %zu bytes, %.2f bits/element (%s)", bytes(),
                  bits_per_element(), format_name().c_str());
    std::string line = buf;
    const std::string k = pca_plan_shape("keys", pca_k_), v = pca_plan_shape("values", pca_v_);
    if (!k.empty() || !v.empty())
        line += "; pca plan: " + k + (k.empty() || v.empty() ? "" : "; ") + v;
    return line;
}

}  // namespace kvrt
