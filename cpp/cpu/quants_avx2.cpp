// AVX2 (+FMA, F16C) dot products, matmul tiles and activation quantizers.
//
// Matmul tiles are register-blocked R weight rows x C activation columns:
// each weight block is unpacked once and used C times, each activation block
// loaded once and used R times; accumulation stays in float vectors per
// (row, column) and is reduced once at the end of the row.
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>

#include <cmath>

#include "../quants.h"
#include "quants_impl.h"

namespace kvrt {

namespace {

inline float h2f(kvrt_half h) { return _cvtsh_ss(h); }

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// 16 bytes of nibbles -> 32 bytes: low nibbles first, then high nibbles.
inline __m256i unpack_nibbles(const uint8_t* qs) {
    const __m128i t = _mm_loadu_si128((const __m128i*)qs);
    const __m256i b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

// Sum of products of 32 int8 pairs as 8 int32 lanes. `x_unsigned` lets the
// unsigned-times-signed instruction take x directly; signed x goes through
// the |x| * sign(y, x) identity.
template <bool x_unsigned>
inline __m256i dot_i8(__m256i x, __m256i y) {
    __m256i p16;
    if (x_unsigned) p16 = _mm256_maddubs_epi16(x, y);
    else p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

// Weight block traits: unpack codes, scale and (for _1 types) minimum.
struct w_q4_0 {
    using act = block_q8_0;
    static constexpr size_t size = sizeof(block_q4_0);
    static constexpr bool is_unsigned = false, has_min = false;
    static inline __m256i load(const uint8_t* p, float* d, float*) {
        const block_q4_0* b = (const block_q4_0*)p;
        *d = h2f(b->d);
        return _mm256_sub_epi8(unpack_nibbles(b->qs), _mm256_set1_epi8(8));
    }
};
struct w_q4_1 {
    using act = block_q8_1;
    static constexpr size_t size = sizeof(block_q4_1);
    static constexpr bool is_unsigned = true, has_min = true;
    static inline __m256i load(const uint8_t* p, float* d, float* m) {
        const block_q4_1* b = (const block_q4_1*)p;
        *d = h2f(b->d);
        *m = h2f(b->m);
        return unpack_nibbles(b->qs);
    }
};
// 5th bits: bit j of qh goes to byte j (as 0x10).
inline __m256i q5_high_bits(const uint8_t* qh4) {
    uint32_t qh;
    __builtin_memcpy(&qh, qh4, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                           0x0101010101010101, 0x0000000000000000);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), shuf);
    const __m256i bit = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    bytes = _mm256_or_si256(bytes, bit);
    bytes = _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
    return _mm256_and_si256(bytes, _mm256_set1_epi8(0x10));
}
struct w_q5_0 {
    using act = block_q8_0;
    static constexpr size_t size = sizeof(block_q5_0);
    static constexpr bool is_unsigned = false, has_min = false;
    static inline __m256i load(const uint8_t* p, float* d, float*) {
        const block_q5_0* b = (const block_q5_0*)p;
        *d = h2f(b->d);
        const __m256i q = _mm256_or_si256(unpack_nibbles(b->qs), q5_high_bits(b->qh));
        return _mm256_sub_epi8(q, _mm256_set1_epi8(16));
    }
};
struct w_q5_1 {
    using act = block_q8_1;
    static constexpr size_t size = sizeof(block_q5_1);
    static constexpr bool is_unsigned = true, has_min = true;
    static inline __m256i load(const uint8_t* p, float* d, float* m) {
        const block_q5_1* b = (const block_q5_1*)p;
        *d = h2f(b->d);
        *m = h2f(b->m);
        return _mm256_or_si256(unpack_nibbles(b->qs), q5_high_bits(b->qh));
    }
};
struct w_q8_0 {
    using act = block_q8_0;
    static constexpr size_t size = sizeof(block_q8_0);
    static constexpr bool is_unsigned = false, has_min = false;
    static inline __m256i load(const uint8_t* p, float* d, float*) {
        const block_q8_0* b = (const block_q8_0*)p;
        *d = h2f(b->d);
        return _mm256_loadu_si256((const __m256i*)b->qs);
    }
};

template <class A>
inline float act_sum(const A* a);
template <>
inline float act_sum(const block_q8_1* a) { return h2f(a->s); }
template <>
inline float act_sum(const block_q8_0*) { return 0.0f; }

template <class W, int R, int C>
void tile_kernel(int64_t n, const uint8_t* x, size_t bx, const uint8_t* y, size_t by, float* out,
                 size_t ldo) {
    using A = typename W::act;
    __m256 acc[R][C];
    float macc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps(), macc[r][c] = 0.0f;
    const int64_t nb = n / 32;
    for (int64_t b = 0; b < nb; ++b) {
        __m256i wq[R];
        float wd[R], wm[R];
        for (int r = 0; r < R; ++r) wq[r] = W::load(x + r * bx + b * W::size, &wd[r], &wm[r]);
        for (int c = 0; c < C; ++c) {
            const A* a = (const A*)(y + c * by) + b;
            const __m256i aq = _mm256_loadu_si256((const __m256i*)a->qs);
            const float ad = h2f(a->d);
            for (int r = 0; r < R; ++r) {
                const __m256 p = _mm256_cvtepi32_ps(dot_i8<W::is_unsigned>(wq[r], aq));
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(wd[r] * ad), p, acc[r][c]);
                if (W::has_min) macc[r][c] += wm[r] * act_sum(a);
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) out[c * ldo + r] = hsum(acc[r][c]) + macc[r][c];
}

constexpr int kR = 4, kC = 2;

template <class W>
void gemm_tile(int64_t n, const void* vx, size_t bx, const void* vy, size_t by, float* out,
               size_t ldo, int nr, int nc) {
    using K = void (*)(int64_t, const uint8_t*, size_t, const uint8_t*, size_t, float*, size_t);
    static const K table[kR][kC] = {
        {tile_kernel<W, 1, 1>, tile_kernel<W, 1, 2>},
        {tile_kernel<W, 2, 1>, tile_kernel<W, 2, 2>},
        {tile_kernel<W, 3, 1>, tile_kernel<W, 3, 2>},
        {tile_kernel<W, 4, 1>, tile_kernel<W, 4, 2>},
    };
    const uint8_t* x = (const uint8_t*)vx;
    const uint8_t* y = (const uint8_t*)vy;
    for (int c = 0; c < nc; c += kC) {
        const int cc = nc - c < kC ? nc - c : kC;
        for (int r = 0; r < nr; r += kR) {
            const int rr = nr - r < kR ? nr - r : kR;
            table[rr - 1][cc - 1](n, x + r * bx, bx, y + c * by, by, out + c * ldo + r, ldo);
        }
    }
}

template <class W>
float vec_dot(int64_t n, const void* x, const void* y) {
    float s;
    tile_kernel<W, 1, 1>(n, (const uint8_t*)x, 0, (const uint8_t*)y, 0, &s, 1);
    return s;
}

float vec_dot_f16(int64_t n, const void* vx, const void* vy) {
    const uint16_t* x = (const uint16_t*)vx;
    const float* y = (const float*)vy;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(x + i))),
                               _mm256_loadu_ps(y + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(x + i + 8))),
                               _mm256_loadu_ps(y + i + 8), acc1);
    }
    float s = hsum(_mm256_add_ps(acc0, acc1));
    for (; i < n; ++i) s += _cvtsh_ss(x[i]) * y[i];
    return s;
}

float vec_dot_f32(int64_t n, const void* vx, const void* vy) {
    const float* x = (const float*)vx;
    const float* y = (const float*)vy;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), acc1);
    }
    float s = hsum(_mm256_add_ps(acc0, acc1));
    for (; i < n; ++i) s += x[i] * y[i];
    return s;
}

// roundf (half away from zero), bit-exact with the reference quantizer:
// truncate, then step away from zero when the dropped part is >= 0.5.
inline __m256i round_away_epi32(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    const __m256 frac = _mm256_andnot_ps(sign_mask, _mm256_sub_ps(v, t));
    const __m256 step = _mm256_or_ps(_mm256_and_ps(v, sign_mask), _mm256_set1_ps(1.0f));
    const __m256 up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    return _mm256_cvtps_epi32(_mm256_add_ps(t, _mm256_and_ps(up, step)));
}

// One block of 32 floats -> 32 int8 codes; returns d and the code sum.
inline void quant_block_q8(const float* x, int8_t* qs, float* d_out, int* sum_out) {
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    __m256 v[4], amax = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, v[k]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float d = _mm_cvtss_f32(m) / 127;
    const float id = d ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; ++k) q[k] = round_away_epi32(_mm256_mul_ps(v[k], vid));
    const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_hadd_epi32(s4, s4);
    s4 = _mm_hadd_epi32(s4, s4);
    *sum_out = _mm_cvtsi128_si32(s4);
    // Pack 32 x int32 -> int8 keeping element order (packs interleave lanes).
    __m256i p16a = _mm256_packs_epi32(q[0], q[1]);
    __m256i p16b = _mm256_packs_epi32(q[2], q[3]);
    __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i*)qs, p8);
    *d_out = d;
}

void quant_q8_0(const float* x, void* vy, int64_t n) {
    block_q8_0* y = (block_q8_0*)vy;
    for (int64_t i = 0; i < n / 32; ++i) {
        float d;
        int sum;
        quant_block_q8(x + 32 * i, y[i].qs, &d, &sum);
        y[i].d = _cvtss_sh(d, 0);
    }
}

void quant_q8_1(const float* x, void* vy, int64_t n) {
    block_q8_1* y = (block_q8_1*)vy;
    for (int64_t i = 0; i < n / 32; ++i) {
        float d;
        int sum;
        quant_block_q8(x + 32 * i, y[i].qs, &d, &sum);
        y[i].d = _cvtss_sh(d, 0);
        y[i].s = _cvtss_sh(sum * d, 0);
    }
}

}  // namespace

vec_dot_fn simd_vec_dot(ggml_type t) {
    switch (t) {
        case GGML_TYPE_Q4_0: return vec_dot<w_q4_0>;
        case GGML_TYPE_Q4_1: return vec_dot<w_q4_1>;
        case GGML_TYPE_Q5_0: return vec_dot<w_q5_0>;
        case GGML_TYPE_Q5_1: return vec_dot<w_q5_1>;
        case GGML_TYPE_Q8_0: return vec_dot<w_q8_0>;
        case GGML_TYPE_F16: return vec_dot_f16;
        case GGML_TYPE_F32: return vec_dot_f32;
        default: return nullptr;
    }
}

gemm_tile_fn simd_gemm_tile(ggml_type t) {
    switch (t) {
        case GGML_TYPE_Q4_0: return gemm_tile<w_q4_0>;
        case GGML_TYPE_Q4_1: return gemm_tile<w_q4_1>;
        case GGML_TYPE_Q5_0: return gemm_tile<w_q5_0>;
        case GGML_TYPE_Q5_1: return gemm_tile<w_q5_1>;
        case GGML_TYPE_Q8_0: return gemm_tile<w_q8_0>;
        default: return nullptr;
    }
}

quantize_fn simd_quantizer(ggml_type t) {
    switch (t) {
        case GGML_TYPE_Q8_0: return quant_q8_0;
        case GGML_TYPE_Q8_1: return quant_q8_1;
        default: return nullptr;
    }
}

const char* simd_name() { return "AVX2"; }

}  // namespace kvrt

#endif
