// Builds without a SIMD path (neither AVX2 nor arm64 NEON): the dispatcher
// falls back to the scalar reference everywhere.
#if !(defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)) && \
    !(defined(__ARM_NEON) && defined(__aarch64__))

#include "quants_impl.h"

namespace kvrt {

vec_dot_fn simd_vec_dot(ggml_type) { return nullptr; }
gemm_tile_fn simd_gemm_tile(ggml_type) { return nullptr; }
quantize_fn simd_quantizer(ggml_type) { return nullptr; }
const char* simd_name() { return "scalar"; }

}  // namespace kvrt

#endif
