// Dispatch between the scalar reference and the SIMD paths, plus the
// half-precision conversions every path uses.
#include "quants.h"

#include <cmath>
#include <cstring>

#include "common.h"
#include "cpu/quants_impl.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace kvrt {

namespace {
quants_impl g_impl = QUANTS_IMPL_SIMD;

uint32_t f2u(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
float u2f(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

[[noreturn]] void unsupported(const char* what, ggml_type t) {
    throw error(std::string(what) + ": unsupported tensor type " + ggml_type_geometry(t).name);
}
}  // namespace

void quants_set_impl(quants_impl impl) { g_impl = impl; }
quants_impl quants_get_impl() { return g_impl; }
const char* quants_simd_name() { return simd_name(); }

float fp16_to_fp32(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#elif defined(__aarch64__)
    __fp16 v;
    std::memcpy(&v, &h, 2);
    return (float)v;
#else
    // Exponent rebias through a float multiply handles normals and subnormals.
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u, two_w = w + w;
    const float exp_scale = u2f(0x7800000u);  // 2^-112
    const float normalized = u2f((two_w >> 4) + (0x70u << 23)) * exp_scale;
    const float denormalized = u2f((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t r = two_w < (1u << 27) ? f2u(denormalized) : f2u(normalized);
    return u2f(sign | r);
#endif
}

uint16_t fp32_to_fp16(float f) {
#if defined(__F16C__)
    return _cvtss_sh(f, 0);
#elif defined(__aarch64__)
    __fp16 v = (__fp16)f;
    uint16_t h;
    std::memcpy(&h, &v, 2);
    return h;
#else
    // Round-to-nearest-even via float arithmetic (as in FP16 reference code).
    float base = (std::fabs(f) * u2f(0x77800000u)) * u2f(0x08800000u);
    const uint32_t w = f2u(f), shl1_w = w + w, sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = u2f((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = f2u(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u, mant_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mant_bits;
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
#endif
}

float bf16_to_fp32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t fp32_to_bf16(float f) {
    const uint32_t u = f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);  // quiet NaN
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

size_t quants_row_size(ggml_type t, int64_t n) {
    const ggml_type_size g = ggml_type_geometry(t);
    if (g.block_size == 0) unsupported("row size", t);
    return (size_t)(n / g.block_size) * g.type_size;
}

ggml_type quants_vec_dot_type(ggml_type t) {
    switch (t) {
        case GGML_TYPE_Q4_0: case GGML_TYPE_Q4_1: case GGML_TYPE_Q5_0: case GGML_TYPE_Q5_1:
        case GGML_TYPE_Q8_0:
            return KVRT_TYPE_Q16;
        case GGML_TYPE_Q4_K: case GGML_TYPE_Q5_K: case GGML_TYPE_Q6_K: return GGML_TYPE_Q8_K;
        case GGML_TYPE_F32: case GGML_TYPE_F16: case GGML_TYPE_BF16: return GGML_TYPE_F32;
        default: unsupported("vec_dot", t);
    }
}

void quants_dequantize_row(ggml_type t, const void* x, float* y, int64_t n) {
    ref_dequantize_row(t, x, y, n);
}

void quants_quantize_row(ggml_type t, const float* x, void* y, int64_t n) {
    quantize_fn f = g_impl == QUANTS_IMPL_SIMD ? simd_quantizer(t) : nullptr;
    if (!f) f = ref_quantizer(t);
    if (!f) unsupported("quantize", t);
    f(x, y, n);
}

float quants_vec_dot(ggml_type t, int64_t n, const void* x, const void* y) {
    vec_dot_fn f = g_impl == QUANTS_IMPL_SIMD ? simd_vec_dot(t) : nullptr;
    if (!f) f = ref_vec_dot(t);
    if (!f) unsupported("vec_dot", t);
    return f(n, x, y);
}

void quants_gemm_tile(ggml_type t, int64_t n, const void* x, size_t bx, const void* y, size_t by,
                      float* out, size_t ldo, int nr, int nc) {
    if (g_impl == QUANTS_IMPL_SIMD) {
        if (gemm_tile_fn g = simd_gemm_tile(t)) return g(n, x, bx, y, by, out, ldo, nr, nc);
    }
    vec_dot_fn f = g_impl == QUANTS_IMPL_SIMD ? simd_vec_dot(t) : nullptr;
    if (!f) f = ref_vec_dot(t);
    if (!f) unsupported("vec_dot", t);
    const uint8_t* xb = (const uint8_t*)x;
    const uint8_t* yb = (const uint8_t*)y;
    for (int c = 0; c < nc; ++c)
        for (int r = 0; r < nr; ++r) out[c * ldo + r] = f(n, xb + r * bx, yb + c * by);
}

}  // namespace kvrt
