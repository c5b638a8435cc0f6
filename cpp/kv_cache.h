// KV cache: per layer, one stream of keys and one of values, each in its own
// format (layouts in kv_layout.h). A format implements storing new tokens and
// the two halves of attention over its own storage (scores against keys, the
// probability-weighted sum of values), so attention never needs a
// dequantized copy of the cache. Softmax and the split over positions live in
// cpu/attention.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kvrt {

enum kv_kind {
    KV_KIND_F32,
    KV_KIND_F16,
    KV_KIND_Q8_0,    // llama.cpp's block layout: the comparison baseline
    KV_KIND_Q4_0,
    KV_KIND_AFFINE,  // keys per channel over token blocks (KIVI), values per token
    KV_KIND_ROT,     // random-sign Walsh-Hadamard, then per-token affine
    KV_KIND_PCA,     // calibrated basis, banded static quantizers
};

struct kv_type {
    kv_kind kind = KV_KIND_F16;
    int bits = 16;      // code bits of affine / rot
    float budget = 0;   // pca: average bits per element (0: the calibration's default;
                        // -1: "auto", pca when a calibration is found, else f16)
    int window = 0;     // pca: the newest positions each query sees exact (half y)
    int window8 = 0;    // pca: the same in 8 bits (":eN"; not with window)
};

inline constexpr kv_type KV_TYPE_F32{KV_KIND_F32, 32, 0};
inline constexpr kv_type KV_TYPE_F16{KV_KIND_F16, 16, 0};

// Parses "f32", "f16", "q8_0", "q4_0", "affine:B" (B in 2,3,4,8), "rot:B",
// "pca", "pca:B" (B average bits, 0.5..8), "pca:B:wN" / "pca:wN" (with a recent
// window of N positions, 1..1024), "auto"; throws kvrt::error naming the known
// formats.
kv_type kv_type_from_name(const std::string& name);
std::string kv_type_name(const kv_type& t);

// Static quantizer and basis of one (layer, kv head) of a pca stream.
struct kv_pca_head {
    std::vector<float> basis;  // (dim, dim): row c is principal direction c
    std::vector<float> mean;   // (dim)
    std::vector<float> sigma;  // (dim) standard deviation of y_c
    std::vector<uint8_t> bits; // (dim) bits of channel c, 0 = truncated
    std::vector<float> lo;     // (dim) y_c / a_t = lo_c + step_c * code
    std::vector<float> step;   // (dim)
    // Keys only, optional: the mean of the keys before RoPE, turned to each
    // position and subtracted before the projection (a constant pre-RoPE
    // offset would otherwise spin into variance of the post-RoPE keys).
    // Pair i of head dims (i2, i2 + pair_gap) turns by rope_freq[i] radians
    // per position; pairs whose mean is zero cost nothing.
    std::vector<float> rope_mean;  // (dim) or empty
    std::vector<float> rope_freq;  // (n_rot/2)
    int pair_stride = 2, pair_gap = 1;  // NORM rope: (2i, 2i+1); NEOX: (i, i + n_rot/2)
};

// Whether rotary pair i of h has a mean the keys lose (every stream skips
// the pairs whose mean is zero: they cost nothing).
inline bool kv_pca_pair_held(const kv_pca_head& h, int i) {
    if (h.rope_mean.empty()) return false;
    const int a = i * h.pair_stride;
    return h.rope_mean[a] != 0.0f || h.rope_mean[a + h.pair_gap] != 0.0f;
}

// One layer's keys or values: n_ctx positions x n_head_kv heads x head_dim.
class kv_stream {
public:
    virtual ~kv_stream() = default;
    // x: [n][n_head_kv*head_dim], written at positions pos0 .. pos0+n-1
    // (pos0 may be below the positions written so far: they are replaced).
    virtual void store(int pos0, int n, const float* x) = 0;
    // s[r*ld + j] = q_r . key(t0 + j) + c_r for query rows r < n_rep of kv
    // head h, q: [n_rep][head_dim]; c_r is any constant independent of the
    // position (softmax ignores it), the same for every call with this q.
    virtual void scores(int h, const float* q, int n_rep, int t0, int t1, float* s,
                        int ld) const = 0;
    // out[r*head_dim + d] += sum_j p[r*ld + j] * u(t0 + j)[d], where u is
    // the value in the stream's own domain (finish() maps it back).
    virtual void accumulate(int h, const float* p, int n_rep, int t0, int t1, int ld,
                            float* out) const = 0;
    // scores() and accumulate() for query rows whose positions are known: row
    // r is the token at own0 + r / per_token. Formats whose cached values
    // depend on the reader's position (pca's recent window) override them.
    virtual void scores_at(int h, const float* q, int n_rep, int t0, int t1, float* s, int ld,
                           int /*own0*/, int /*per_token*/) const {
        scores(h, q, n_rep, t0, t1, s, ld);
    }
    virtual void accumulate_at(int h, const float* p, int n_rep, int t0, int t1, int ld, float* out,
                               int /*own0*/, int /*per_token*/) const {
        accumulate(h, p, n_rep, t0, t1, ld, out);
    }
    // Maps a normalised (probabilities summing to 1) accumulation of head h
    // from the stream's domain to values, in place: o[head_dim].
    virtual void finish(int /*h*/, float* /*o*/) const {}
    // Bytes this stream holds (codes, scales, staging), from its allocations.
    virtual size_t bytes() const = 0;
    // The cached vector at `pos` as the format reproduces it, all heads:
    // x[n_head_kv*head_dim] (tests and error measurements, not attention).
    virtual void decode(int pos, float* x) const = 0;
    // Token-major formats: the stored bytes of position `pos`, all heads
    // ([pos][head] records), and their count in *n; other backends' encoders
    // are checked against them. Null for channel-major formats.
    virtual const uint8_t* token_bytes(int /*pos*/, size_t* /*n*/) const { return nullptr; }
    // pca: the stored arrays as laid out in kv_layout.h -- part 0 the code
    // blocks, 1 the token scales, 2 the sinks -- and their sizes in *n; null
    // for other parts and formats (other backends' encoders are checked
    // against them).
    virtual const uint8_t* packed_bytes(int /*part*/, size_t* /*n*/) const { return nullptr; }
};

// The seed of layer il's key or value stream in a kv_cache (rot's signs);
// other backends give their streams the same.
inline uint32_t kv_stream_seed(int il, bool is_key) { return 2u * (uint32_t)il + (is_key ? 0u : 1u); }

// `seed` varies rot's signs between streams; pca needs the per-head
// quantizers (n_head_kv of them), other formats ignore them.
std::unique_ptr<kv_stream> kv_stream_create(const kv_type& t, bool is_key, int n_ctx,
                                            int n_head_kv, int head_dim, uint32_t seed = 0,
                                            const std::vector<kv_pca_head>* pca = nullptr);

class kv_calibration;

class kv_cache {
public:
    // A pca format needs `calib` (a null one is an error).
    kv_cache(int n_layer, int n_ctx, int n_head_kv, int head_dim, kv_type type_k, kv_type type_v,
             const kv_calibration* calib = nullptr);

    kv_stream& keys(int layer) { return *k_[layer]; }
    kv_stream& values(int layer) { return *v_[layer]; }
    // Replaces one stream (calibration probes one layer's format at a time).
    void set_stream(int layer, bool is_value, std::unique_ptr<kv_stream> s);
    int n_ctx() const { return n_ctx_; }
    // The quantizers of the pca streams, per layer (empty where keys or
    // values are not pca): what another backend's cache is made from.
    const std::vector<std::vector<kv_pca_head>>& pca_heads(bool is_value) const {
        return is_value ? pca_v_ : pca_k_;
    }

    size_t bytes() const;
    // 8 * bytes / (n_ctx * n_layer * 2 * n_head_kv * head_dim).
    double bits_per_element() const;
    std::string format_name() const;  // "f16" or "k=q8_0,v=f16" style
    // The line every command prints on stderr.
    std::string summary_line() const;

private:
    int n_layer_, n_ctx_, n_head_kv_, head_dim_;
    kv_type type_k_, type_v_;
    std::vector<std::unique_ptr<kv_stream>> k_, v_;
    std::vector<std::vector<kv_pca_head>> pca_k_, pca_v_;
};

}  // namespace kvrt
