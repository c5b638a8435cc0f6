// KV cache: per layer, one stream of keys and one of values, each in its own
// format. A format implements storing new tokens and the two halves of
// attention over its own storage (scores against keys, the probability-
// weighted sum of values), so attention never needs a dequantized copy of
// the cache. Softmax and the split over positions live in cpu/attention.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kvrt {

enum kv_type {
    KV_TYPE_F32,
    KV_TYPE_F16,
};

// Parses "f32" / "f16"; throws kvrt::error listing the known names.
kv_type kv_type_from_name(const std::string& name);
const char* kv_type_name(kv_type t);

// One layer's keys or values: n_ctx positions x n_head_kv heads x head_dim.
class kv_stream {
public:
    virtual ~kv_stream() = default;
    // x: [n][n_head_kv*head_dim], written at positions pos0 .. pos0+n-1.
    virtual void store(int pos0, int n, const float* x) = 0;
    // s[r*ld + j] = q_r . key(t0 + j) for query rows r < n_rep of kv head h,
    // q: [n_rep][head_dim].
    virtual void scores(int h, const float* q, int n_rep, int t0, int t1, float* s,
                        int ld) const = 0;
    // out[r*head_dim + d] += sum_j p[r*ld + j] * value(t0 + j)[d].
    virtual void accumulate(int h, const float* p, int n_rep, int t0, int t1, int ld,
                            float* out) const = 0;
    // Bytes this stream holds (codes, scales, staging), from its allocations.
    virtual size_t bytes() const = 0;
};

std::unique_ptr<kv_stream> kv_stream_create(kv_type t, int n_ctx, int n_head_kv, int head_dim);

class kv_cache {
public:
    kv_cache(int n_layer, int n_ctx, int n_head_kv, int head_dim, kv_type type_k, kv_type type_v);

    kv_stream& keys(int layer) { return *k_[layer]; }
    kv_stream& values(int layer) { return *v_[layer]; }
    int n_ctx() const { return n_ctx_; }

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
};

}  // namespace kvrt
