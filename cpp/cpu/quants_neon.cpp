// arm64 NEON dot products, matmul tiles and activation quantizers; the twin
// of quants_avx2.cpp. Integer block dots use SDOT (vdotq_s32) where the
// target has it (__ARM_FEATURE_DOTPROD), else widening multiplies.
//
// Matmul tiles are register-blocked R weight rows x C activation columns:
// each weight block is unpacked once and used C times. K-quant superblocks
// are unpacked by the scalar ref_unpack_k (once per row, shared by all C
// columns); their dots are NEON.
#if defined(__ARM_NEON) && defined(__aarch64__)

#include <arm_neon.h>

#include <cmath>
#include <cstring>

#include "../quants.h"
#include "quants_impl.h"

namespace kvrt {

namespace {

inline float h2f(kvrt_half h) {
    __fp16 v;
    std::memcpy(&v, &h, 2);
    return (float)v;
}
inline kvrt_half f2h(float f) {
    const __fp16 v = (__fp16)f;
    kvrt_half h;
    std::memcpy(&h, &v, 2);
    return h;
}

// acc += 4 partial sums of a 16 x int8 dot.
inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    const int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    const int16x8_t hi = vmull_high_s8(a, b);
    return vpadalq_s16(vpadalq_s16(acc, lo), hi);
#endif
}

struct codes32 {
    int8x16_t lo, hi;  // elements 0..15, 16..31
};

// 16 bytes of nibbles -> elements 0..15 (low nibbles) and 16..31 (high).
inline codes32 unpack_nibbles(const uint8_t* qs) {
    const uint8x16_t v = vld1q_u8(qs);
    return {vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))), vreinterpretq_s8_u8(vshrq_n_u8(v, 4))};
}

// 5th bits of q5_0 / q5_1: bit j of qh -> 0x10 of element j.
inline codes32 q5_high_bits(const uint8_t* qh4) {
    uint32_t qh;
    std::memcpy(&qh, qh4, 4);
    const uint8x16_t src = vreinterpretq_u8_u32(vdupq_n_u32(qh));
    static const uint8_t idx_lo[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
    static const uint8_t idx_hi[16] = {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t b = vld1q_u8(bit), m = vdupq_n_u8(0x10);
    const uint8x16_t lo = vandq_u8(vtstq_u8(vqtbl1q_u8(src, vld1q_u8(idx_lo)), b), m);
    const uint8x16_t hi = vandq_u8(vtstq_u8(vqtbl1q_u8(src, vld1q_u8(idx_hi)), b), m);
    return {vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi)};
}

inline codes32 or_codes(codes32 a, codes32 b) { return {vorrq_s8(a.lo, b.lo), vorrq_s8(a.hi, b.hi)}; }
inline codes32 sub_codes(codes32 a, int8_t k) {
    return {vsubq_s8(a.lo, vdupq_n_s8(k)), vsubq_s8(a.hi, vdupq_n_s8(k))};
}

// Weight block traits: codes (as int8), scale and, for _1 types, minimum.
struct w_q4_0 {
    using act = block_q16;
    static constexpr size_t size = sizeof(block_q4_0);
    static constexpr bool has_min = false;
    static codes32 load(const uint8_t* p, float* d, float*) {
        const block_q4_0* b = (const block_q4_0*)p;
        *d = h2f(b->d);
        return sub_codes(unpack_nibbles(b->qs), 8);
    }
};
struct w_q4_1 {
    using act = block_q16;
    static constexpr size_t size = sizeof(block_q4_1);
    static constexpr bool has_min = true;
    static codes32 load(const uint8_t* p, float* d, float* m) {
        const block_q4_1* b = (const block_q4_1*)p;
        *d = h2f(b->d);
        *m = h2f(b->m);
        return unpack_nibbles(b->qs);
    }
};
struct w_q5_0 {
    using act = block_q16;
    static constexpr size_t size = sizeof(block_q5_0);
    static constexpr bool has_min = false;
    static codes32 load(const uint8_t* p, float* d, float*) {
        const block_q5_0* b = (const block_q5_0*)p;
        *d = h2f(b->d);
        return sub_codes(or_codes(unpack_nibbles(b->qs), q5_high_bits(b->qh)), 16);
    }
};
struct w_q5_1 {
    using act = block_q16;
    static constexpr size_t size = sizeof(block_q5_1);
    static constexpr bool has_min = true;
    static codes32 load(const uint8_t* p, float* d, float* m) {
        const block_q5_1* b = (const block_q5_1*)p;
        *d = h2f(b->d);
        *m = h2f(b->m);
        return or_codes(unpack_nibbles(b->qs), q5_high_bits(b->qh));
    }
};
struct w_q8_0 {
    using act = block_q16;
    static constexpr size_t size = sizeof(block_q8_0);
    static constexpr bool has_min = false;
    static codes32 load(const uint8_t* p, float* d, float*) {
        const block_q8_0* b = (const block_q8_0*)p;
        *d = h2f(b->d);
        return {vld1q_s8(b->qs), vld1q_s8(b->qs + 16)};
    }
};

// Weight codes widened to int16 once per block, reused by every column.
struct codes32_s16 {
    int16x8_t q[4];  // elements 0..7, 8..15, 16..23, 24..31
};
inline codes32_s16 widen(codes32 c) {
    return {{vmovl_s8(vget_low_s8(c.lo)), vmovl_high_s8(c.lo), vmovl_s8(vget_low_s8(c.hi)),
             vmovl_high_s8(c.hi)}};
}

// Sum of products of 32 widened weight codes with 32 int16 activation codes.
inline int32x4_t dot_w8_a16(const codes32_s16& w, const int16x8_t* a) {
    int32x4_t s = vmull_s16(vget_low_s16(w.q[0]), vget_low_s16(a[0]));
    s = vmlal_high_s16(s, w.q[0], a[0]);
    for (int k = 1; k < 4; ++k) {
        s = vmlal_s16(s, vget_low_s16(w.q[k]), vget_low_s16(a[k]));
        s = vmlal_high_s16(s, w.q[k], a[k]);
    }
    return s;
}

template <class W, int R, int C>
void tile_kernel(int64_t n, const uint8_t* x, size_t bx, const uint8_t* y, size_t by, float* out,
                 size_t ldo) {
    using A = typename W::act;
    float32x4_t acc[R][C];
    float macc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = vdupq_n_f32(0.0f), macc[r][c] = 0.0f;
    for (int64_t b = 0; b < n / 32; ++b) {
        codes32_s16 wq[R];
        float wd[R], wm[R];
        for (int r = 0; r < R; ++r) wq[r] = widen(W::load(x + r * bx + b * W::size, &wd[r], &wm[r]));
        for (int c = 0; c < C; ++c) {
            const A* a = (const A*)(y + c * by) + b;
            const int16x8_t aq[4] = {vld1q_s16(a->qs), vld1q_s16(a->qs + 8), vld1q_s16(a->qs + 16),
                                     vld1q_s16(a->qs + 24)};
            for (int r = 0; r < R; ++r) {
                acc[r][c] = vmlaq_n_f32(acc[r][c], vcvtq_f32_s32(dot_w8_a16(wq[r], aq)), wd[r] * a->d);
                if (W::has_min) macc[r][c] += wm[r] * a->s;
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) out[c * ldo + r] = vaddvq_f32(acc[r][c]) + macc[r][c];
}

template <class W>
struct blk {
    template <int R, int C>
    static void kernel(int64_t n, const uint8_t* x, size_t bx, const uint8_t* y, size_t by,
                       float* out, size_t ldo) {
        tile_kernel<W, R, C>(n, x, bx, y, by, out, ldo);
    }
};

// K-quants: see k_unpacked in quants_impl.h for the algebra.
template <ggml_type T, int R, int C>
void k_tile_kernel(int64_t n, const uint8_t* x, size_t bx, const uint8_t* y, size_t by, float* out,
                   size_t ldo) {
    const size_t size = ggml_type_geometry(T).type_size;
    float acc[R][C] = {};
    k_unpacked w[R];
    for (int64_t b = 0; b < n / QK_K; ++b) {
        for (int r = 0; r < R; ++r) ref_unpack_k(T, x + r * bx + b * size, &w[r]);
        for (int c = 0; c < C; ++c) {
            const block_q8_K* a = (const block_q8_K*)(y + c * by) + b;
            const int16x8_t bs0 = vld1q_s16(a->bsums), bs1 = vld1q_s16(a->bsums + 8);
            for (int r = 0; r < R; ++r) {
                int32x4_t isum = vdupq_n_s32(0);
                for (int k = 0; k < 16; ++k) {
                    const int32x4_t g = dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(vld1q_u8(w[r].u + 16 * k)),
                                              vld1q_s8(a->qs + 16 * k));
                    isum = vmlaq_n_s32(isum, g, w[r].s[k]);
                }
                int32x4_t msum = vmull_s16(vget_low_s16(bs0), vld1_s16(w[r].mn));
                msum = vmlal_high_s16(msum, bs0, vld1q_s16(w[r].mn));
                msum = vmlal_s16(msum, vget_low_s16(bs1), vld1_s16(w[r].mn + 8));
                msum = vmlal_high_s16(msum, bs1, vld1q_s16(w[r].mn + 8));
                acc[r][c] += a->d * (w[r].d * (float)vaddvq_s32(isum) - w[r].dm * (float)vaddvq_s32(msum));
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) out[c * ldo + r] = acc[r][c];
}

template <ggml_type T>
struct kq {
    template <int R, int C>
    static void kernel(int64_t n, const uint8_t* x, size_t bx, const uint8_t* y, size_t by,
                       float* out, size_t ldo) {
        k_tile_kernel<T, R, C>(n, x, bx, y, by, out, ldo);
    }
};



float vec_dot_f32(int64_t n, const void* vx, const void* vy) {
    const float* x = (const float*)vx;
    const float* y = (const float*)vy;
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        a0 = vfmaq_f32(a0, vld1q_f32(x + i), vld1q_f32(y + i));
        a1 = vfmaq_f32(a1, vld1q_f32(x + i + 4), vld1q_f32(y + i + 4));
    }
    float s = vaddvq_f32(vaddq_f32(a0, a1));
    for (; i < n; ++i) s += x[i] * y[i];
    return s;
}

float vec_dot_f16(int64_t n, const void* vx, const void* vy) {
    const uint16_t* x = (const uint16_t*)vx;
    const float* y = (const float*)vy;
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(x + i));
        a0 = vfmaq_f32(a0, vcvt_f32_f16(vget_low_f16(h)), vld1q_f32(y + i));
        a1 = vfmaq_f32(a1, vcvt_high_f32_f16(h), vld1q_f32(y + i + 4));
    }
    float s = vaddvq_f32(vaddq_f32(a0, a1));
    for (; i < n; ++i) s += h2f(x[i]) * y[i];
    return s;
}

// One block of 32 floats -> int8 codes rounded half away from zero
// (vcvtaq is exactly roundf, as the reference); returns d and the code sum.
inline void quant_block_q8(const float* x, int8_t* qs, float* d_out, int* sum_out) {
    float32x4_t v[8];
    float32x4_t amax = vdupq_n_f32(0.0f);
    for (int k = 0; k < 8; ++k) v[k] = vld1q_f32(x + 4 * k), amax = vmaxq_f32(amax, vabsq_f32(v[k]));
    const float d = vmaxvq_f32(amax) / 127;
    const float id = d ? 1.0f / d : 0.0f;
    int32x4_t sum = vdupq_n_s32(0);
    int16x8_t h[4];
    for (int k = 0; k < 4; ++k) {
        const int32x4_t q0 = vcvtaq_s32_f32(vmulq_n_f32(v[2 * k], id));
        const int32x4_t q1 = vcvtaq_s32_f32(vmulq_n_f32(v[2 * k + 1], id));
        sum = vaddq_s32(sum, vaddq_s32(q0, q1));
        h[k] = vcombine_s16(vmovn_s32(q0), vmovn_s32(q1));
    }
    vst1q_s8(qs, vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1])));
    vst1q_s8(qs + 16, vcombine_s8(vmovn_s16(h[2]), vmovn_s16(h[3])));
    *d_out = d;
    *sum_out = vaddvq_s32(sum);
}

// 32 floats -> q16 block, bit-identical to the reference quantizer.
void quant_q16(const float* x, void* vy, int64_t n) {
    block_q16* y = (block_q16*)vy;
    for (int64_t i = 0; i < n / 32; ++i, x += 32) {
        float32x4_t v[8];
        float32x4_t amax = vdupq_n_f32(0.0f);
        for (int k = 0; k < 8; ++k) v[k] = vld1q_f32(x + 4 * k), amax = vmaxq_f32(amax, vabsq_f32(v[k]));
        const float d = vmaxvq_f32(amax) / 32767;
        const float id = d ? 1.0f / d : 0.0f;
        int32x4_t sum = vdupq_n_s32(0);
        for (int k = 0; k < 8; ++k) {
            const int32x4_t q = vcvtaq_s32_f32(vmulq_n_f32(v[k], id));
            sum = vaddq_s32(sum, q);
            vst1_s16(y[i].qs + 4 * k, vmovn_s32(q));
        }
        y[i].d = d;
        y[i].s = d * (float)vaddvq_s32(sum);
    }
}

void quant_q8_0(const float* x, void* vy, int64_t n) {
    block_q8_0* y = (block_q8_0*)vy;
    for (int64_t i = 0; i < n / 32; ++i) {
        float d;
        int sum;
        quant_block_q8(x + 32 * i, y[i].qs, &d, &sum);
        y[i].d = f2h(d);
    }
}

void quant_q8_1(const float* x, void* vy, int64_t n) {
    block_q8_1* y = (block_q8_1*)vy;
    for (int64_t i = 0; i < n / 32; ++i) {
        float d;
        int sum;
        quant_block_q8(x + 32 * i, y[i].qs, &d, &sum);
        y[i].d = f2h(d);
        y[i].s = f2h(sum * d);
    }
}

// q8_K: codes rounded half to even (vcvtnq, ggml's nearest_int), capped at 127.
void quant_q8_K(const float* x, void* vy, int64_t n) {
    block_q8_K* y = (block_q8_K*)vy;
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        float32x4_t amax = vdupq_n_f32(0.0f);
        for (int k = 0; k < QK_K; k += 4) amax = vmaxq_f32(amax, vabsq_f32(vld1q_f32(x + k)));
        const float a = vmaxvq_f32(amax);
        if (a == 0.0f) {
            std::memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        int j = 0;
        while (std::fabs(x[j]) != a) ++j;  // first value of largest magnitude
        const float iscale = -127.0f / x[j];
        const int32x4_t cap = vdupq_n_s32(127);
        for (int k = 0; k < QK_K; k += 16) {
            int16x8_t h[2];
            for (int s = 0; s < 2; ++s) {
                const int32x4_t q0 = vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + k + 8 * s), iscale)), cap);
                const int32x4_t q1 =
                    vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + k + 8 * s + 4), iscale)), cap);
                h[s] = vcombine_s16(vmovn_s32(q0), vmovn_s32(q1));
            }
            vst1q_s8(y[i].qs + k, vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1])));
            y[i].bsums[k / 16] = (int16_t)vaddvq_s16(vaddq_s16(h[0], h[1]));
        }
        y[i].d = 1 / iscale;
    }
}

}  // namespace

vec_dot_fn simd_vec_dot(ggml_type t) {
    switch (t) {
        case GGML_TYPE_Q4_0: return tile_vec_dot<blk<w_q4_0>>;
        case GGML_TYPE_Q4_1: return tile_vec_dot<blk<w_q4_1>>;
        case GGML_TYPE_Q5_0: return tile_vec_dot<blk<w_q5_0>>;
        case GGML_TYPE_Q5_1: return tile_vec_dot<blk<w_q5_1>>;
        case GGML_TYPE_Q8_0: return tile_vec_dot<blk<w_q8_0>>;
        case GGML_TYPE_Q4_K: return tile_vec_dot<kq<GGML_TYPE_Q4_K>>;
        case GGML_TYPE_Q5_K: return tile_vec_dot<kq<GGML_TYPE_Q5_K>>;
        case GGML_TYPE_Q6_K: return tile_vec_dot<kq<GGML_TYPE_Q6_K>>;
        case GGML_TYPE_F16: return vec_dot_f16;
        case GGML_TYPE_F32: return vec_dot_f32;
        default: return nullptr;
    }
}

gemm_tile_fn simd_gemm_tile(ggml_type t) {
    switch (t) {
        case GGML_TYPE_Q4_0: return gemm_tile_4x2<blk<w_q4_0>>;
        case GGML_TYPE_Q4_1: return gemm_tile_4x2<blk<w_q4_1>>;
        case GGML_TYPE_Q5_0: return gemm_tile_4x2<blk<w_q5_0>>;
        case GGML_TYPE_Q5_1: return gemm_tile_4x2<blk<w_q5_1>>;
        case GGML_TYPE_Q8_0: return gemm_tile_4x2<blk<w_q8_0>>;
        case GGML_TYPE_Q4_K: return gemm_tile_4x2<kq<GGML_TYPE_Q4_K>>;
        case GGML_TYPE_Q5_K: return gemm_tile_4x2<kq<GGML_TYPE_Q5_K>>;
        case GGML_TYPE_Q6_K: return gemm_tile_4x2<kq<GGML_TYPE_Q6_K>>;
        default: return nullptr;
    }
}

quantize_fn simd_quantizer(ggml_type t) {
    switch (t) {
        case GGML_TYPE_Q8_0: return quant_q8_0;
        case KVRT_TYPE_Q16: return quant_q16;
        case GGML_TYPE_Q8_1: return quant_q8_1;
        case GGML_TYPE_Q8_K: return quant_q8_K;
        default: return nullptr;
    }
}

const char* simd_name() { return "NEON"; }

}  // namespace kvrt

#endif
