// Scalar reference for every tensor type: dequantization, llama.cpp-
// compatible reference quantizers, and dot products. The oracle the SIMD
// paths are tested against.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "../common.h"
#include "../quants.h"
#include "quants_impl.h"

// Bit-compatibility with llama.cpp / gguf-py needs each multiply and add
// rounded separately: -march=native would otherwise fuse `x * id + 8.5f` into
// an FMA and move a code across a rounding boundary now and then.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace kvrt {

namespace {

inline float h2f(kvrt_half h) { return fp16_to_fp32(h); }
inline kvrt_half f2h(float f) { return fp32_to_fp16(f); }
// roundf (half away from zero): quantize_row_q8_0/q8_1_ref and np_roundf.
inline int round_away(float x) { return (int)std::round(x); }
// Half to even: ggml's nearest_int (the 1.5 * 2^23 trick), used by q8_K.
inline int round_even(float x) { return (int)std::nearbyint(x); }

// ---- dequantization ----

void deq_q4_0(const void* vx, float* y, int64_t n) {
    const block_q4_0* x = (const block_q4_0*)vx;
    for (int64_t i = 0; i < n / QK4_0; ++i, y += QK4_0) {
        const float d = h2f(x[i].d);
        for (int j = 0; j < 16; ++j) {
            y[j] = ((x[i].qs[j] & 0x0F) - 8) * d;
            y[j + 16] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void deq_q4_1(const void* vx, float* y, int64_t n) {
    const block_q4_1* x = (const block_q4_1*)vx;
    for (int64_t i = 0; i < n / QK4_1; ++i, y += QK4_1) {
        const float d = h2f(x[i].d), m = h2f(x[i].m);
        for (int j = 0; j < 16; ++j) {
            y[j] = (x[i].qs[j] & 0x0F) * d + m;
            y[j + 16] = (x[i].qs[j] >> 4) * d + m;
        }
    }
}

void deq_q5_0(const void* vx, float* y, int64_t n) {
    const block_q5_0* x = (const block_q5_0*)vx;
    for (int64_t i = 0; i < n / QK5_0; ++i, y += QK5_0) {
        const float d = h2f(x[i].d);
        uint32_t qh;
        std::memcpy(&qh, x[i].qh, 4);
        for (int j = 0; j < 16; ++j) {
            const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            y[j] = (((x[i].qs[j] & 0x0F) | h0) - 16) * d;
            y[j + 16] = (((x[i].qs[j] >> 4) | h1) - 16) * d;
        }
    }
}

void deq_q5_1(const void* vx, float* y, int64_t n) {
    const block_q5_1* x = (const block_q5_1*)vx;
    for (int64_t i = 0; i < n / QK5_1; ++i, y += QK5_1) {
        const float d = h2f(x[i].d), m = h2f(x[i].m);
        uint32_t qh;
        std::memcpy(&qh, x[i].qh, 4);
        for (int j = 0; j < 16; ++j) {
            const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            y[j] = ((x[i].qs[j] & 0x0F) | h0) * d + m;
            y[j + 16] = ((x[i].qs[j] >> 4) | h1) * d + m;
        }
    }
}

void deq_q8_0(const void* vx, float* y, int64_t n) {
    const block_q8_0* x = (const block_q8_0*)vx;
    for (int64_t i = 0; i < n / QK8_0; ++i, y += QK8_0) {
        const float d = h2f(x[i].d);
        for (int j = 0; j < QK8_0; ++j) y[j] = x[i].qs[j] * d;
    }
}

void deq_q8_1(const void* vx, float* y, int64_t n) {
    const block_q8_1* x = (const block_q8_1*)vx;
    for (int64_t i = 0; i < n / QK8_1; ++i, y += QK8_1) {
        const float d = h2f(x[i].d);
        for (int j = 0; j < QK8_1; ++j) y[j] = x[i].qs[j] * d;
    }
}

// 6-bit scale and min j of a q4_K / q5_K block.
inline void k_scale_min(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

void deq_q4_K(const void* vx, float* y, int64_t n) {
    const block_q4_K* x = (const block_q4_K*)vx;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const uint8_t* q = x[i].qs;
        const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
        for (int j = 0, is = 0; j < QK_K; j += 64, is += 2, q += 32) {
            uint8_t sc, m;
            k_scale_min(is, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            k_scale_min(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
        }
    }
}

void deq_q5_K(const void* vx, float* y, int64_t n) {
    const block_q5_K* x = (const block_q5_K*)vx;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const uint8_t* ql = x[i].qs;
        const uint8_t* qh = x[i].qh;
        const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0, is = 0; j < QK_K; j += 64, is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
            uint8_t sc, m;
            k_scale_min(is, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            k_scale_min(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        }
    }
}

void deq_q6_K(const void* vx, float* y, int64_t n) {
    const block_q6_K* x = (const block_q6_K*)vx;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = h2f(x[i].d);
        const uint8_t* ql = x[i].ql;
        const uint8_t* qh = x[i].qh;
        const int8_t* sc = x[i].scales;
        for (int k = 0; k < QK_K; k += 128, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * sc[is] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
        }
    }
}

void deq_q8_K(const void* vx, float* y, int64_t n) {
    const block_q8_K* x = (const block_q8_K*)vx;
    for (int64_t i = 0; i < n / QK_K; ++i, y += QK_K)
        for (int j = 0; j < QK_K; ++j) y[j] = x[i].d * x[i].qs[j];
}

// ---- reference quantizers (llama.cpp's quantize_row_*_ref) ----

void quant_f16(const float* x, void* vy, int64_t n) {
    uint16_t* y = (uint16_t*)vy;
    for (int64_t i = 0; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

void quant_bf16(const float* x, void* vy, int64_t n) {
    uint16_t* y = (uint16_t*)vy;
    for (int64_t i = 0; i < n; ++i) y[i] = fp32_to_bf16(x[i]);
}

void quant_f32(const float* x, void* vy, int64_t n) { std::memcpy(vy, x, n * sizeof(float)); }

// Signed value of largest magnitude (first one on ties).
inline float signed_absmax(const float* x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; ++j)
        if (amax < std::fabs(x[j])) {
            amax = std::fabs(x[j]);
            max = x[j];
        }
    return max;
}

void quant_q4_0(const float* x, void* vy, int64_t n) {
    block_q4_0* y = (block_q4_0*)vy;
    for (int64_t i = 0; i < n / QK4_0; ++i, x += QK4_0) {
        const float d = signed_absmax(x, QK4_0) / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        for (int j = 0; j < 16; ++j) {
            const uint8_t a = (uint8_t)std::min(15, (int)(int8_t)(x[j] * id + 8.5f));
            const uint8_t b = (uint8_t)std::min(15, (int)(int8_t)(x[j + 16] * id + 8.5f));
            y[i].qs[j] = a | (b << 4);
        }
    }
}

void quant_q4_1(const float* x, void* vy, int64_t n) {
    block_q4_1* y = (block_q4_1*)vy;
    for (int64_t i = 0; i < n / QK4_1; ++i, x += QK4_1) {
        float lo = x[0], hi = x[0];
        for (int j = 1; j < QK4_1; ++j) lo = std::min(lo, x[j]), hi = std::max(hi, x[j]);
        const float d = (hi - lo) / 15;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        y[i].m = f2h(lo);
        for (int j = 0; j < 16; ++j) {
            const uint8_t a = (uint8_t)std::min(15, (int)(int8_t)((x[j] - lo) * id + 0.5f));
            const uint8_t b = (uint8_t)std::min(15, (int)(int8_t)((x[j + 16] - lo) * id + 0.5f));
            y[i].qs[j] = a | (b << 4);
        }
    }
}

void quant_q5_0(const float* x, void* vy, int64_t n) {
    block_q5_0* y = (block_q5_0*)vy;
    for (int64_t i = 0; i < n / QK5_0; ++i, x += QK5_0) {
        const float d = signed_absmax(x, QK5_0) / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        uint32_t qh = 0;
        for (int j = 0; j < 16; ++j) {
            const uint8_t a = (uint8_t)std::min(31, (int)(int8_t)(x[j] * id + 16.5f));
            const uint8_t b = (uint8_t)std::min(31, (int)(int8_t)(x[j + 16] * id + 16.5f));
            y[i].qs[j] = (a & 0x0F) | ((b & 0x0F) << 4);
            qh |= ((a & 0x10u) >> 4) << j;
            qh |= ((b & 0x10u) >> 4) << (j + 16);
        }
        std::memcpy(y[i].qh, &qh, 4);
    }
}

void quant_q5_1(const float* x, void* vy, int64_t n) {
    block_q5_1* y = (block_q5_1*)vy;
    for (int64_t i = 0; i < n / QK5_1; ++i, x += QK5_1) {
        float lo = x[0], hi = x[0];
        for (int j = 1; j < QK5_1; ++j) lo = std::min(lo, x[j]), hi = std::max(hi, x[j]);
        const float d = (hi - lo) / 31;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        y[i].m = f2h(lo);
        uint32_t qh = 0;
        for (int j = 0; j < 16; ++j) {
            const uint8_t a = (uint8_t)(int8_t)((x[j] - lo) * id + 0.5f);
            const uint8_t b = (uint8_t)(int8_t)((x[j + 16] - lo) * id + 0.5f);
            y[i].qs[j] = (a & 0x0F) | ((b & 0x0F) << 4);
            qh |= ((a & 0x10u) >> 4) << j;
            qh |= ((b & 0x10u) >> 4) << (j + 16);
        }
        std::memcpy(y[i].qh, &qh, 4);
    }
}

void quant_q8_0(const float* x, void* vy, int64_t n) {
    block_q8_0* y = (block_q8_0*)vy;
    for (int64_t i = 0; i < n / QK8_0; ++i, x += QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        for (int j = 0; j < QK8_0; ++j) y[i].qs[j] = (int8_t)round_away(x[j] * id);
    }
}

void quant_q8_1(const float* x, void* vy, int64_t n) {
    block_q8_1* y = (block_q8_1*)vy;
    for (int64_t i = 0; i < n / QK8_1; ++i, x += QK8_1) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_1; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK8_1; ++j) {
            y[i].qs[j] = (int8_t)round_away(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].d = f2h(d);
        y[i].s = f2h(sum * d);
    }
}

void quant_q8_K(const float* x, void* vy, int64_t n) {
    block_q8_K* y = (block_q8_K*)vy;
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        const float max = signed_absmax(x, QK_K);
        if (max == 0.0f) {
            std::memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; ++j) y[i].qs[j] = (int8_t)std::min(127, round_even(iscale * x[j]));
        for (int j = 0; j < QK_K / 16; ++j) {
            int sum = 0;
            for (int k = 0; k < 16; ++k) sum += y[i].qs[j * 16 + k];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

void quant_q16(const float* x, void* vy, int64_t n) {
    block_q16* y = (block_q16*)vy;
    for (int64_t i = 0; i < n / 32; ++i, x += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 32767;
        const float id = d ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; ++j) {
            y[i].qs[j] = (int16_t)round_away(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].d = d;
        y[i].s = d * (float)sum;
    }
}

void deq_q16(const void* vx, float* y, int64_t n) {
    const block_q16* x = (const block_q16*)vx;
    for (int64_t i = 0; i < n / 32; ++i, y += 32)
        for (int j = 0; j < 32; ++j) y[j] = x[i].qs[j] * x[i].d;
}

// ---- dot products (x: weight row, y: activation row of vec_dot_type) ----

float dot_f32(int64_t n, const void* x, const void* y) {
    const float *a = (const float*)x, *b = (const float*)y;
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
    return (float)s;
}

float dot_f16(int64_t n, const void* x, const void* y) {
    const uint16_t* a = (const uint16_t*)x;
    const float* b = (const float*)y;
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += fp16_to_fp32(a[i]) * b[i];
    return (float)s;
}

float dot_bf16(int64_t n, const void* x, const void* y) {
    const uint16_t* a = (const uint16_t*)x;
    const float* b = (const float*)y;
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += bf16_to_fp32(a[i]) * b[i];
    return (float)s;
}

// The 32-element types against q16 activations: weight codes unpacked to
// integers, an exact int64 dot with the 16-bit activation codes, then
// d_w * d_a * dot + m_w * s_a (m_w = 0 for the _0 types).
inline int64_t idot32(const int* q, const int16_t* y) {
    int64_t s = 0;
    for (int j = 0; j < 32; ++j) s += (int64_t)q[j] * y[j];
    return s;
}

inline void unpack_q5(const uint8_t* qs, const uint8_t* qh4, int offset, int* q) {
    uint32_t qh;
    std::memcpy(&qh, qh4, 4);
    for (int j = 0; j < 16; ++j) {
        q[j] = ((qs[j] & 0xF) | (((qh >> j) << 4) & 0x10)) - offset;
        q[j + 16] = ((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - offset;
    }
}
inline void unpack_q4_0(const block_q4_0& b, int* q, float* d, float* m) {
    for (int j = 0; j < 16; ++j) q[j] = (b.qs[j] & 0xF) - 8, q[j + 16] = (b.qs[j] >> 4) - 8;
    *d = h2f(b.d), *m = 0.0f;
}
inline void unpack_q4_1(const block_q4_1& b, int* q, float* d, float* m) {
    for (int j = 0; j < 16; ++j) q[j] = b.qs[j] & 0xF, q[j + 16] = b.qs[j] >> 4;
    *d = h2f(b.d), *m = h2f(b.m);
}
inline void unpack_q5_0(const block_q5_0& b, int* q, float* d, float* m) {
    unpack_q5(b.qs, b.qh, 16, q);
    *d = h2f(b.d), *m = 0.0f;
}
inline void unpack_q5_1(const block_q5_1& b, int* q, float* d, float* m) {
    unpack_q5(b.qs, b.qh, 0, q);
    *d = h2f(b.d), *m = h2f(b.m);
}
inline void unpack_q8_0(const block_q8_0& b, int* q, float* d, float* m) {
    for (int j = 0; j < 32; ++j) q[j] = b.qs[j];
    *d = h2f(b.d), *m = 0.0f;
}

template <class B, void (*Unpack)(const B&, int*, float*, float*)>
float dot_q16(int64_t n, const void* vx, const void* vy) {
    const B* x = (const B*)vx;
    const block_q16* y = (const block_q16*)vy;
    float s = 0.0f;
    for (int64_t i = 0; i < n / 32; ++i) {
        int q[32];
        float d, m;
        Unpack(x[i], q, &d, &m);
        s += (float)idot32(q, y[i].qs) * (d * y[i].d) + m * y[i].s;
    }
    return s;
}

// K-quants in ggml's integer form: the weight superblock as 256 unsigned
// codes u, 16 scales s and 16 mins mn (one per 16 elements), so that
//   dot = y.d * (d * sum_k s_k * (u . y)_k  -  dm * sum_k mn_k * bsum_k).
float dot_k(ggml_type t, int64_t n, const void* vx, const void* vy) {
    const uint8_t* x = (const uint8_t*)vx;
    const block_q8_K* y = (const block_q8_K*)vy;
    const size_t bytes = ggml_type_geometry(t).type_size;
    float s = 0.0f;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        k_unpacked w;
        ref_unpack_k(t, x + i * bytes, &w);
        int sum = 0, msum = 0;
        for (int k = 0; k < 16; ++k) {
            int g = 0;
            for (int l = 0; l < 16; ++l) g += w.u[16 * k + l] * y[i].qs[16 * k + l];
            sum += w.s[k] * g;
            msum += w.mn[k] * y[i].bsums[k];
        }
        s += y[i].d * (w.d * sum - w.dm * msum);
    }
    return s;
}

float dot_q4_K(int64_t n, const void* x, const void* y) { return dot_k(GGML_TYPE_Q4_K, n, x, y); }
float dot_q5_K(int64_t n, const void* x, const void* y) { return dot_k(GGML_TYPE_Q5_K, n, x, y); }
float dot_q6_K(int64_t n, const void* x, const void* y) { return dot_k(GGML_TYPE_Q6_K, n, x, y); }

}  // namespace

void ref_unpack_k(ggml_type t, const void* block, k_unpacked* w) {
    if (t == GGML_TYPE_Q6_K) {
        const block_q6_K* b = (const block_q6_K*)block;
        w->d = w->dm = h2f(b->d);
        for (int h = 0; h < 2; ++h) {
            const uint8_t* ql = b->ql + 64 * h;
            const uint8_t* qh = b->qh + 32 * h;
            uint8_t* u = w->u + 128 * h;
            for (int l = 0; l < 32; ++l) {
                u[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                u[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                u[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                u[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            }
        }
        for (int k = 0; k < 16; ++k) w->s[k] = b->scales[k], w->mn[k] = (int16_t)(32 * b->scales[k]);
        return;
    }
    // q4_K / q5_K share d, dmin, scales and the nibble layout.
    const bool five = t == GGML_TYPE_Q5_K;
    const block_q4_K* b4 = (const block_q4_K*)block;
    const block_q5_K* b5 = (const block_q5_K*)block;
    const uint8_t* scales = five ? b5->scales : b4->scales;
    const uint8_t* qs = five ? b5->qs : b4->qs;
    w->d = h2f(five ? b5->d : b4->d);
    w->dm = h2f(five ? b5->dmin : b4->dmin);
    for (int j = 0; j < 4; ++j)
        for (int l = 0; l < 32; ++l) {
            int lo = qs[32 * j + l] & 0xF, hi = qs[32 * j + l] >> 4;
            if (five) lo |= ((b5->qh[l] >> (2 * j)) & 1) << 4, hi |= ((b5->qh[l] >> (2 * j + 1)) & 1) << 4;
            w->u[64 * j + l] = (uint8_t)lo;
            w->u[64 * j + 32 + l] = (uint8_t)hi;
        }
    for (int g = 0; g < 8; ++g) {
        uint8_t sc, m;
        k_scale_min(g, scales, &sc, &m);
        w->s[2 * g] = w->s[2 * g + 1] = sc;
        w->mn[2 * g] = w->mn[2 * g + 1] = m;
    }
}

void ref_dequantize_row(ggml_type t, const void* x, float* y, int64_t n) {
    switch (t) {
        case GGML_TYPE_F32: std::memcpy(y, x, n * sizeof(float)); return;
        case GGML_TYPE_F16:
            for (int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(((const uint16_t*)x)[i]);
            return;
        case GGML_TYPE_BF16:
            for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_fp32(((const uint16_t*)x)[i]);
            return;
        case GGML_TYPE_Q4_0: return deq_q4_0(x, y, n);
        case GGML_TYPE_Q4_1: return deq_q4_1(x, y, n);
        case GGML_TYPE_Q5_0: return deq_q5_0(x, y, n);
        case GGML_TYPE_Q5_1: return deq_q5_1(x, y, n);
        case GGML_TYPE_Q8_0: return deq_q8_0(x, y, n);
        case GGML_TYPE_Q8_1: return deq_q8_1(x, y, n);
        case KVRT_TYPE_Q16: return deq_q16(x, y, n);
        case GGML_TYPE_Q4_K: return deq_q4_K(x, y, n);
        case GGML_TYPE_Q5_K: return deq_q5_K(x, y, n);
        case GGML_TYPE_Q6_K: return deq_q6_K(x, y, n);
        case GGML_TYPE_Q8_K: return deq_q8_K(x, y, n);
        default: break;
    }
    throw error(std::string("dequantize: unsupported type ") + ggml_type_geometry(t).name);
}

quantize_fn ref_quantizer(ggml_type t) {
    switch (t) {
        case GGML_TYPE_F32: return quant_f32;
        case GGML_TYPE_F16: return quant_f16;
        case GGML_TYPE_BF16: return quant_bf16;
        case GGML_TYPE_Q4_0: return quant_q4_0;
        case GGML_TYPE_Q4_1: return quant_q4_1;
        case GGML_TYPE_Q5_0: return quant_q5_0;
        case GGML_TYPE_Q5_1: return quant_q5_1;
        case GGML_TYPE_Q8_0: return quant_q8_0;
        case GGML_TYPE_Q8_1: return quant_q8_1;
        case KVRT_TYPE_Q16: return quant_q16;
        case GGML_TYPE_Q8_K: return quant_q8_K;
        default: return nullptr;
    }
}

vec_dot_fn ref_vec_dot(ggml_type t) {
    switch (t) {
        case GGML_TYPE_F32: return dot_f32;
        case GGML_TYPE_F16: return dot_f16;
        case GGML_TYPE_BF16: return dot_bf16;
        case GGML_TYPE_Q4_0: return dot_q16<block_q4_0, unpack_q4_0>;
        case GGML_TYPE_Q4_1: return dot_q16<block_q4_1, unpack_q4_1>;
        case GGML_TYPE_Q5_0: return dot_q16<block_q5_0, unpack_q5_0>;
        case GGML_TYPE_Q5_1: return dot_q16<block_q5_1, unpack_q5_1>;
        case GGML_TYPE_Q8_0: return dot_q16<block_q8_0, unpack_q8_0>;
        case GGML_TYPE_Q4_K: return dot_q4_K;
        case GGML_TYPE_Q5_K: return dot_q5_K;
        case GGML_TYPE_Q6_K: return dot_q6_K;
        default: return nullptr;
    }
}

}  // namespace kvrt
