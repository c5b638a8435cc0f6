// CPU kernels of the forward pass, one file per op family.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "../ggml_types.h"
#include "../kv_cache.h"
#include "../model.h"
#include "../threadpool.h"

namespace kvrt {

// y = x / rms(x) * w over rows of n (y may alias x). rms_norm.cpp
void rms_norm_rows(const float* x, const float* w, float* y, int64_t n_rows, int64_t n, float eps);

// Rotary embedding in place over `n_heads` heads of head_dim at one
// position; rotates the first n_rot dims of each head. rope.cpp
struct rope_table {
    rope_kind kind = ROPE_KIND_NORM;
    int head_dim = 0, n_rot = 0;
    std::vector<float> inv_freq;  // n_rot/2: freq_scale * base^(-2i/n_rot) / factor_i
    void init(const hparams& hp);
    void apply(float* x, int n_heads, int pos) const;
};

// y = silu(g) * u, elementwise. swiglu.cpp
void swiglu(const float* g, const float* u, float* y, int64_t n);

// Activations [n_rows][cols] converted once to the vec_dot type of the
// weights they will multiply (shared by q/k/v and by gate/up). matmul.cpp
struct matmul_input {
    ggml_type type = GGML_TYPE_F32;
    int64_t cols = 0;
    int n_rows = 0;
    size_t row_bytes = 0;
    std::vector<uint8_t> buf;
};
void matmul_prepare(const float* x, int n_rows, int64_t cols, ggml_type weight_type,
                    matmul_input* in, thread_pool& pool);
// out[t][r] = w_row(r) . x_t, out row-major [n_rows][w.rows] (ld = w.rows).
void matmul(const weight& w, const matmul_input& in, float* out, thread_pool& pool);
// Several weights over the same input in one parallel pass.
struct matmul_job {
    const weight* w;
    float* out;
};
void matmul_many(const matmul_job* jobs, int n_jobs, const matmul_input& in, thread_pool& pool);
// out[t][r] += bias[r]
void add_bias_rows(float* out, const float* bias, int n_rows, int64_t n);

// Causal attention of n_tok query tokens at positions pos0.. over the cache
// streams (which already hold those tokens). q: [n_tok][n_head*head_dim],
// out likewise. attention.cpp
struct attention_params {
    int n_head = 0, n_head_kv = 0, head_dim = 0;
    int sliding_window = 0;
};
class attention_scratch {
public:
    std::vector<float> partial;  // per work item: n_rep * (head_dim + 2)
    std::vector<std::vector<float>> per_thread;  // scores
};
void attention_forward(const kv_stream& keys, const kv_stream& values, const float* q, int n_tok,
                       int pos0, const attention_params& p, float* out, attention_scratch& scratch,
                       thread_pool& pool);

}  // namespace kvrt
