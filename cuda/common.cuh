// Shared pieces of the CUDA backend: error checks, device views of weights
// and KV streams, and the launchers each op family's .cu file provides.
#pragma once

// cuBLAS serves the prefill GEMMs when the build links it (CMake defines
// KVRT_CUBLAS with CUDA::cublas); without it, batches go through the matvec
// kernel (correct, slower) and the sources still compile with nvcc alone.
#if defined(KVRT_CUBLAS)
#include <cublas_v2.h>
#endif
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common.h"
#include "ggml_types.h"
#include "kv_cache.h"
#include "quant_blocks.h"

namespace kvrt {

// Throws kvrt::error "CUDA: <what>: <reason>".
void cuda_check(cudaError_t e, const char* what);
#define KVRT_CUDA_CHECK(x) ::kvrt::cuda_check((x), #x)
#if defined(KVRT_CUBLAS)
void cublas_check(cublasStatus_t s, const char* what);
#define KVRT_CUBLAS_CHECK(x) ::kvrt::cublas_check((x), #x)
#endif

// A weight matrix on the device in its file type: rows of `cols` elements.
struct dev_weight {
    ggml_type type = GGML_TYPE_F32;
    int64_t rows = 0, cols = 0;
    size_t row_bytes = 0;
    const uint8_t* d = nullptr;
};

// ---- matmul.cu ----
// Weight types the CUDA kernels read; the names for error messages.
bool cuda_weight_type_supported(ggml_type t);
const char* cuda_weight_types_supported();
// out[t][r] = w_row(r) . x_t, x [n][cols], out [n][rows]; reads each weight
// block once per 8 tokens (decode and small batches).
void cuda_matvec(const dev_weight& w, const float* x, int n, float* out, cudaStream_t s);
// Batches through cuBLAS: GEMM_F32 dequantizes w to f32 (wbuf: rows*cols
// floats) and multiplies in f32, as exact as the CPU's 16-bit activation
// codes; GEMM_F16 dequantizes to f16 and converts x into xbuf (n*cols
// halves) for the tensor cores (f32 accumulation), faster but activations
// rounded to 11 bits.
enum gemm_precision { GEMM_F32, GEMM_F16 };
#if defined(KVRT_CUBLAS)
void cuda_matmul_gemm(const dev_weight& w, const float* x, int n, float* out, gemm_precision prec,
                      void* wbuf, void* xbuf, cublasHandle_t h, cudaStream_t s);
#endif
// out[t] = row ids[t] of w as floats (embedding lookup).
void cuda_get_rows(const dev_weight& w, const int32_t* ids, int n, float* out, cudaStream_t s);
// x[t][i] += b[i]
void cuda_add_bias_rows(float* x, const float* b, int n_rows, int64_t n, cudaStream_t s);
// x[i] += y[i]
void cuda_add(float* x, const float* y, int64_t n, cudaStream_t s);

// ---- rms_norm.cu ----
void cuda_rms_norm_rows(const float* x, const float* w, float* y, int64_t n_rows, int64_t n,
                        float eps, cudaStream_t s);

// ---- rope.cu ----
struct cuda_rope {
    int neox = 0;  // 0: pairs (2i, 2i+1); 1: pairs (i, i + n_rot/2)
    int head_dim = 0, n_rot = 0;
    const float* inv_freq = nullptr;  // device, n_rot/2 (rope_table::inv_freq)
};
// x [n_tok][n_heads*head_dim], token t at position pos0 + t. Where pos_dev
// is given, *pos_dev (device memory, read by the kernel) is added to pos0:
// a captured CUDA graph replays with the position of each decode step.
void cuda_rope_apply(float* x, int n_tok, int n_heads, const cuda_rope& r, int pos0,
                     cudaStream_t s, const int* pos_dev = nullptr);

// ---- swiglu.cu ----
void cuda_swiglu(const float* g, const float* u, float* y, int64_t n, cudaStream_t s);

// ---- kv_encode.cu ----
// One layer's keys or values on the device, laid out as the CPU stream of
// the same format (kv_layout.h): [pos][head] records of `rec` bytes.
struct cuda_kv_stream {
    kv_kind kind = KV_KIND_F16;
    int n_head_kv = 0, head_dim = 0;
    size_t rec = 0;  // bytes per (position, head)
    int rot = 0;     // q8_0/q4_0: Hadamard block (64) applied before quantizing, 0: none
    uint8_t* d = nullptr;
};
// Whether the CUDA backend has this format; the supported names.
bool cuda_kv_kind_supported(kv_kind k);
const char* cuda_kv_kinds_supported();
// Record size and rotation as the CPU stream of kind k uses them.
cuda_kv_stream cuda_kv_stream_shape(kv_kind k, int n_head_kv, int head_dim);
// Encodes x [n][n_head_kv*head_dim] at positions pos0.. byte for byte as the
// CPU stream's store() does.
// pos_dev as for cuda_rope_apply.
void cuda_kv_store(const cuda_kv_stream& st, int pos0, int n, const float* x, cudaStream_t s,
                   const int* pos_dev = nullptr);

// ---- attention.cu ----
struct cuda_attn_params {
    int n_head = 0, n_head_kv = 0, head_dim = 0;
    int sliding_window = 0;
};
// Floats of partial results attention needs for n_tok queries at most
// max_len positions deep (flash-decoding splits).
size_t cuda_attention_partial_floats(const cuda_attn_params& p, int n_tok, int max_len,
                                     int n_sm);
// Causal attention of n_tok queries q [n_tok][n_head*head_dim] at
// positions pos0.. over streams that already hold them; out likewise.
void cuda_attention(const cuda_kv_stream& k, const cuda_kv_stream& v, const float* q, int n_tok,
                    int pos0, const cuda_attn_params& p, float* out, float* partial, int n_sm,
                    cudaStream_t s, const int* pos_dev = nullptr, int split_len = 0);
// pos_dev as for cuda_rope_apply; split_len > 0 sizes the split over the
// sequence for that many positions instead of pos0 + n_tok (a graph's grid
// is fixed: it is sized for the whole context and spans follow *pos_dev).

}  // namespace kvrt
