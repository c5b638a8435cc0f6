// Internal interface between the quants dispatcher (quants.cpp) and the
// per-ISA implementations in cpp/cpu/quants_*.cpp.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../ggml_types.h"
#include "../quant_blocks.h"

namespace kvrt {

using vec_dot_fn = float (*)(int64_t n, const void* x, const void* y);
using quantize_fn = void (*)(const float* x, void* y, int64_t n);
using gemm_tile_fn = void (*)(int64_t n, const void* x, size_t bx, const void* y, size_t by,
                              float* out, size_t ldo, int nr, int nc);

// A K-quant superblock in one form for all three types: 256 unsigned codes
// u, per-16-element scales s and mins mn, so that with k = e / 16 element e is
//   d * s[k] * u[e] - dm * mn[k]
// and a dot with q8_K needs only integer sums plus q8_K's bsums.
// q4_K/q5_K: s, mn = the 6-bit scale/min of each 32-group (repeated);
// q6_K: s = the int8 scale, mn = 32 * s, dm = d (codes stored as u - 32).
struct k_unpacked {
    uint8_t u[QK_K];
    int16_t s[16], mn[16];
    float d, dm;
};

// Scalar reference (quants_ref.cpp).
void ref_unpack_k(ggml_type t, const void* block, k_unpacked* w);
void ref_dequantize_row(ggml_type t, const void* x, float* y, int64_t n);
quantize_fn ref_quantizer(ggml_type t);  // nullptr if none
vec_dot_fn ref_vec_dot(ggml_type t);

// SIMD paths; each returns nullptr where it has no kernel for t.
vec_dot_fn simd_vec_dot(ggml_type t);
gemm_tile_fn simd_gemm_tile(ggml_type t);
quantize_fn simd_quantizer(ggml_type t);  // activations: bit-identical to ref
const char* simd_name();


// Drives a kernel family K (K::kernel<R, C>, R <= 4 rows, C <= 2 columns)
// over an nr x nc tile; shared by the SIMD paths. 4 x 2 keeps 8 float
// accumulators plus 4 unpacked weight blocks within 16 vector registers.
template <class K>
void gemm_tile_4x2(int64_t n, const void* vx, size_t bx, const void* vy, size_t by, float* out,
                   size_t ldo, int nr, int nc) {
    using fn = void (*)(int64_t, const uint8_t*, size_t, const uint8_t*, size_t, float*, size_t);
    static const fn table[4][2] = {
        {K::template kernel<1, 1>, K::template kernel<1, 2>},
        {K::template kernel<2, 1>, K::template kernel<2, 2>},
        {K::template kernel<3, 1>, K::template kernel<3, 2>},
        {K::template kernel<4, 1>, K::template kernel<4, 2>},
    };
    const uint8_t* x = (const uint8_t*)vx;
    const uint8_t* y = (const uint8_t*)vy;
    for (int c = 0; c < nc; c += 2) {
        const int cc = nc - c < 2 ? nc - c : 2;
        for (int r = 0; r < nr; r += 4) {
            const int rr = nr - r < 4 ? nr - r : 4;
            table[rr - 1][cc - 1](n, x + r * bx, bx, y + c * by, by, out + c * ldo + r, ldo);
        }
    }
}

// One dot product through a kernel family's 1 x 1 tile.
template <class K>
float tile_vec_dot(int64_t n, const void* x, const void* y) {
    float s;
    K::template kernel<1, 1>(n, (const uint8_t*)x, 0, (const uint8_t*)y, 0, &s, 1);
    return s;
}

}  // namespace kvrt
