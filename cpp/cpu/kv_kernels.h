// Inner loops of attention over packed KV codes (layouts in kv_layout.h).
// Each kernel has a plain scalar twin (`_ref`) that is its test oracle; the
// unsuffixed entry points pick the fastest path built in.
#pragma once

#include <cstdint>

namespace kvrt {

// "AVX2", "NEON" or "scalar": the path the unsuffixed kernels take.
const char* kv_kernels_simd_name();

// 32 codes of a packed group as floats.
void kv_unpack32_f32(const uint8_t* g, int bits, float* out);
void kv_unpack32_f32_ref(const uint8_t* g, int bits, float* out);

// Channel-major block: n_ch channel groups back to back, channel c with
// bits[c] (> 0) bits. s[r*32 + t] = sum_c w[r*n_ch + c] * code_c[t].
void kv_cmajor_scores(const uint8_t* blk, const uint8_t* bits, int n_ch, const float* w,
                      int n_rep, float* s);
void kv_cmajor_scores_ref(const uint8_t* blk, const uint8_t* bits, int n_ch, const float* w,
                          int n_rep, float* s);

// acc[r*ld + c] += sum_t p[r*32 + t] * code_c[t].
void kv_cmajor_accumulate(const uint8_t* blk, const uint8_t* bits, int n_ch, const float* p,
                          int n_rep, float* acc, int ld);
void kv_cmajor_accumulate_ref(const uint8_t* blk, const uint8_t* bits, int n_ch,
                              const float* p, int n_rep, float* acc, int ld);

// Quantizes 32 floats (x[i*stride]) to an affine group: min, scale =
// (max-min)/(2^bits-1) stored as halves, codes rounded against the stored
// halves. scale/min are written to *scale, *min; codes packed into g.
void kv_affine_quantize32(const float* x, int stride, int bits, uint16_t* scale, uint16_t* min,
                          uint8_t* g);

// Softmax over scores: kv_max is the largest of x[0..n) (n >= 1);
// kv_softmax_exp sets x[j] = exp(x[j] - m) and returns their sum (every
// x[j] <= m). The vector exp is within 2e-7 relative of std::exp above
// exp(-87); below it gives about exp(-87) instead of the (invisible) rest.
float kv_max(const float* x, int n);
float kv_softmax_exp(float* x, int n, float m);
float kv_softmax_exp_ref(float* x, int n, float m);

// A run of 32 positions against k per-position tables: s[r*32 + j] =
// sum_i w[r*k + i] * tab[i*32 + j] (overwrites s). The pca keys' turning
// mean term: tab holds cos and sin of each rotary pair's angle over the run.
void kv_run_scores(const float* w, int k, const float* tab, int n_rep, float* s);
void kv_run_scores_ref(const float* w, int k, const float* tab, int n_rep, float* s);

// In-place orthonormal Walsh-Hadamard transform (n a power of two).
void kv_fwht(float* x, int n);

}  // namespace kvrt

namespace kvrt {

// s[r*ld] = q_r . x for n_rep rows q_r = q + r*n (grouped-query scores
// against one decoded key).
void kv_dot_rows(const float* q, int n_rep, int n, const float* x, float* s, int ld);
// out_r += p[r*ld] * x for n_rep rows out_r = out + r*n.
void kv_axpy_rows(const float* p, int ld, int n_rep, const float* x, int n, float* out);

}  // namespace kvrt
