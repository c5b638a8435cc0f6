// The seam between the engine and the CUDA backend (cuda/). A context made
// with device == DEVICE_CUDA hands every forward call to a gpu_forward, which
// owns the device copies of the weights (in their GGUF types), the device KV
// cache (same packed layouts as the CPU streams, kv_layout.h) and scratch.
// Built without CUDA, cpp/no_cuda.cpp provides these entry points and each
// throws kvrt::error saying so.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ggml_types.h"
#include "kv_cache.h"
#include "model.h"

namespace kvrt {

enum device_kind {
    DEVICE_CPU,
    DEVICE_CUDA,
};

// "cpu" or "cuda"; throws kvrt::error naming both otherwise.
device_kind device_from_name(const std::string& name);

class gpu_forward {
public:
    virtual ~gpu_forward() = default;
    // Tokens at positions pos0 .. pos0+n-1 through the model; the KV cache
    // on the device is written there. Logits of the last n_logits tokens go
    // to `logits` on the host ([n_logits][n_vocab]).
    virtual void forward(const int32_t* tokens, int n, int pos0, float* logits, int n_logits) = 0;
    // One line for stderr: "CUDA: NVIDIA H200, 12.3 MiB of weights" style.
    virtual std::string describe() const = 0;
};

// Throws kvrt::error (one line) when kvrt was built without CUDA, no GPU is
// present, or the model or KV formats are not supported on CUDA yet. pca
// formats take their quantizers from `kv` (the context's CPU cache plan).
std::unique_ptr<gpu_forward> gpu_forward_create(const model& m, int n_ctx, int n_batch,
                                                kv_type type_k, kv_type type_v, int rope_offset,
                                                const kv_cache* kv = nullptr);

// Whether a usable GPU is present (false, with the reason in *why, when
// built without CUDA or none is found).
bool gpu_available(std::string* why);

// Single-op entry points for tests/test_cuda.py: each uploads its inputs,
// runs the CUDA kernel and returns the result on the host. They throw like
// gpu_forward_create when there is no GPU.
//
// out[t][r] = w_row(r) . x_t for w (rows, cols) of type t in file bytes,
// x [n][cols]. prefill: 0 the matvec kernel (activations as q16 codes for
// the block types), 1 the path of batches (dequantize + cuBLAS GEMM in f32),
// 2 the same in f16 (tensor cores), 3 the matvec kernel in f32; plus 8: the
// product added to an out of ones (the residual's path).
std::vector<float> gpu_test_matmul(ggml_type t, const uint8_t* w, int64_t rows, int64_t cols,
                                   const float* x, int n, int prefill);
// The q16 codes made in the launch of op 0 (RMSNorm of rows of a [rows][n]
// with weight b [n]) or op 1 (swiglu of a and b, [rows][n]), then those of
// cuda_quantize_q16 over the op's output made without them (each
// cuda_q16_bytes(rows, n) bytes); then both outputs' floats as bytes.
std::vector<uint8_t> gpu_test_q16_fused(int op, const float* a, const float* b, int64_t rows,
                                        int64_t n, float eps);
// y = rms_norm(x) * w over rows of n.
std::vector<float> gpu_test_rms_norm(const float* x, const float* w, int64_t n_rows, int64_t n,
                                     float eps);
// Rotary embedding of n_tok tokens [n_tok][n_heads*head_dim] at positions
// pos0.., as the model's rope_table (kind, n_rot, frequencies) does.
std::vector<float> gpu_test_rope(const model& m, const float* x, int n_tok, int n_heads,
                                 int pos0);
std::vector<float> gpu_test_swiglu(const float* g, const float* u, int64_t n);
// The bytes a KV stream of kind t (f32, f16, q8_0, q4_0) holds after storing
// x [n][n_head_kv*head_dim] at positions 0..n-1.
std::vector<uint8_t> gpu_test_kv_encode(kv_type t, const float* x, int n, int n_head_kv,
                                        int head_dim, bool is_key = true);
// pca: the bytes a stream of n_ctx positions with quantizers `heads` holds
// (code blocks, token scales, sinks: kv_stream::packed_bytes parts 0, 1, 2
// in turn) after the stores (pos0, n) of `stores` in turn, each taking the
// next n rows of x [rows][n_head_kv*head_dim].
std::vector<uint8_t> gpu_test_kv_encode_pca(const std::vector<kv_pca_head>& heads, int n_ctx,
                                            const std::vector<std::pair<int, int>>& stores,
                                            const float* x);
// affine keys: a stream's blocks, then its staging area, after the stores
// (pos0, n) of `stores` in turn, as gpu_test_kv_encode_pca takes them.
std::vector<uint8_t> gpu_test_kv_encode_affine_keys(kv_type t, int n_ctx, int n_head_kv, int head_dim,
                                                    const std::vector<std::pair<int, int>>& stores,
                                                    const float* x);
// gpu_test_attention over pca keys and values with these quantizers, the
// positions stored in two stores ([0, pos0), then the queries'), with a
// recent window of window (:wN) or window8 (:eN) positions where given.
std::vector<float> gpu_test_attention_pca(const std::vector<kv_pca_head>& heads_k,
                                          const std::vector<kv_pca_head>& heads_v, const float* q,
                                          const float* k, const float* v, int n_tok, int pos0,
                                          int n_head, int sliding_window, int window = 0, int window8 = 0);
// Attention of the last n_tok of pos0+n_tok positions whose keys and values
// k, v ([pos][n_head_kv*head_dim]) are stored in formats type_k / type_v;
// q [n_tok][n_head*head_dim]. Returns [n_tok][n_head*head_dim].
std::vector<float> gpu_test_attention(kv_type type_k, kv_type type_v, const float* q,
                                      const float* k, const float* v, int n_tok, int pos0,
                                      int n_head, int n_head_kv, int head_dim, int sliding_window);

}  // namespace kvrt
