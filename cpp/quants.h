// Tensor element types: dequantization, reference quantization, and the
// quantized dot products that matvec / matmul are built from.
//
// Every type has a scalar reference implementation (the oracle for the SIMD
// paths, bit-for-bit llama.cpp compatible for quantization) plus AVX2 (x86)
// and NEON (arm64) paths where they matter. Activations are converted to the
// weight type's `vec_dot_type` and dotted against the weight rows:
// KVRT_TYPE_Q16 (16-bit codes, see quant_blocks.h) for the 32-element types,
// Q8_K for K-quants (as llama.cpp), F32 for float weights.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ggml_types.h"

namespace kvrt {

enum quants_impl {
    QUANTS_IMPL_SCALAR = 0,  // plain C++ reference
    QUANTS_IMPL_SIMD = 1,    // best available (AVX2 / NEON), scalar where none
};

// Selects the implementation used by the dispatching functions below.
// Global; defaults to QUANTS_IMPL_SIMD. Tests flip it to compare paths.
void quants_set_impl(quants_impl impl);
quants_impl quants_get_impl();
const char* quants_simd_name();  // "AVX2", "NEON" or "scalar"

// Bytes of a row of n elements of type t (n a multiple of the block size).
size_t quants_row_size(ggml_type t, int64_t n);

// Type the activations are quantized to before a dot product with rows of t.
ggml_type quants_vec_dot_type(ggml_type t);

// Dequantize n elements (a multiple of the block size) of type t.
void quants_dequantize_row(ggml_type t, const void* x, float* y, int64_t n);

// Quantize n floats to type t (reference quantizer, bit-compatible with
// llama.cpp's quantize_row_*_ref). Supported t: F32, F16, BF16, Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0, Q8_1, Q8_K, and kvrt's KVRT_TYPE_Q16. Throws
// kvrt::error for others.
void quants_quantize_row(ggml_type t, const float* x, void* y, int64_t n);

// Dot product of a row x of type t with a row y of quants_vec_dot_type(t),
// n elements.
float quants_vec_dot(ggml_type t, int64_t n, const void* x, const void* y);

// Block of dot products used by the matmul: for r < nr, c < nc
//   out[c * ldo + r] = dot(x + r*bx bytes, y + c*by bytes)
// x rows of type t, y rows of quants_vec_dot_type(t). SIMD paths register-
// block small tiles (e.g. 4x2) so each weight block load serves several
// columns; any nr, nc >= 1 must work.
void quants_gemm_tile(ggml_type t, int64_t n, const void* x, size_t bx, const void* y,
                      size_t by, float* out, size_t ldo, int nr, int nc);

// f16 / bf16 scalar conversion.
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);
float bf16_to_fp32(uint16_t h);
uint16_t fp32_to_bf16(float f);

}  // namespace kvrt
