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


// Weight block traits: codes as two vectors of 16 int16 (elements 0..15,
// 16..31). Widening straight from memory (vpmovzxbw / vpmovsxbw) unpacks a
// block in 2-5 instructions. Every type keeps its f16 scale at byte 0 of the
// block and, for the _1 types, its f16 minimum at byte 2.
inline void nibbles_s16(const uint8_t* qs, __m256i* lo, __m256i* hi) {
    const __m256i t = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)qs));
    *lo = _mm256_and_si256(t, _mm256_set1_epi16(0x0F));
    *hi = _mm256_srli_epi16(t, 4);
}
// 5th bits of q5_0 / q5_1 as 0x10 in int16 lanes: bit j of qh -> element j.
inline void q5_high_s16(const uint8_t* qh4, __m256i* lo, __m256i* hi) {
    uint32_t qh;
    __builtin_memcpy(&qh, qh4, 4);
    const __m256i bit = _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
                                          8192, 16384, (short)32768);
    const __m256i l = _mm256_cmpeq_epi16(_mm256_and_si256(_mm256_set1_epi16((short)qh), bit), bit);
    const __m256i h = _mm256_cmpeq_epi16(_mm256_and_si256(_mm256_set1_epi16((short)(qh >> 16)), bit), bit);
    *lo = _mm256_and_si256(l, _mm256_set1_epi16(0x10));
    *hi = _mm256_and_si256(h, _mm256_set1_epi16(0x10));
}
struct w_q4_0 {
    using act = block_q16;
    static constexpr size_t size = sizeof(block_q4_0);
    static constexpr bool has_min = false;
    static inline void load(const uint8_t* p, __m256i* lo, __m256i* hi) {
        const block_q4_0* b = (const block_q4_0*)p;
        nibbles_s16(b->qs, lo, hi);
        *lo = _mm256_sub_epi16(*lo, _mm256_set1_epi16(8));
        *hi = _mm256_sub_epi16(*hi, _mm256_set1_epi16(8));
    }
};
struct w_q4_1 {
    using act = block_q16;
    static constexpr size_t size = sizeof(block_q4_1);
    static constexpr bool has_min = true;
    static inline void load(const uint8_t* p, __m256i* lo, __m256i* hi) {
        const block_q4_1* b = (const block_q4_1*)p;
        nibbles_s16(b->qs, lo, hi);
    }
};
struct w_q5_0 {
    using act = block_q16;
    static constexpr size_t size = sizeof(block_q5_0);
    static constexpr bool has_min = false;
    static inline void load(const uint8_t* p, __m256i* lo, __m256i* hi) {
        const block_q5_0* b = (const block_q5_0*)p;
        __m256i hl, hh;
        nibbles_s16(b->qs, lo, hi);
        q5_high_s16(b->qh, &hl, &hh);
        *lo = _mm256_sub_epi16(_mm256_or_si256(*lo, hl), _mm256_set1_epi16(16));
        *hi = _mm256_sub_epi16(_mm256_or_si256(*hi, hh), _mm256_set1_epi16(16));
    }
};
struct w_q5_1 {
    using act = block_q16;
    static constexpr size_t size = sizeof(block_q5_1);
    static constexpr bool has_min = true;
    static inline void load(const uint8_t* p, __m256i* lo, __m256i* hi) {
        const block_q5_1* b = (const block_q5_1*)p;
        __m256i hl, hh;
        nibbles_s16(b->qs, lo, hi);
        q5_high_s16(b->qh, &hl, &hh);
        *lo = _mm256_or_si256(*lo, hl);
        *hi = _mm256_or_si256(*hi, hh);
    }
};
struct w_q8_0 {
    using act = block_q16;
    static constexpr size_t size = sizeof(block_q8_0);
    static constexpr bool has_min = false;
    static inline void load(const uint8_t* p, __m256i* lo, __m256i* hi) {
        const block_q8_0* b = (const block_q8_0*)p;
        *lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)b->qs));
        *hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(b->qs + 16)));
    }
};

// The f16 at p + r * bx for r < R, as floats in lanes 0..R-1 (0 beyond):
// assembled in registers, since a vector load of scalars just stored would
// miss store forwarding.
template <int R>
inline __m128 gather_half(const uint8_t* p, size_t bx) {
    auto h = [&](int r) { uint16_t v; __builtin_memcpy(&v, p + r * bx, 2); return (int)v; };
    __m128i v = _mm_cvtsi32_si128(h(0));
    if constexpr (R > 1) v = _mm_insert_epi16(v, h(1), 1);
    if constexpr (R > 2) v = _mm_insert_epi16(v, h(2), 2);
    if constexpr (R > 3) v = _mm_insert_epi16(v, h(3), 3);
    return _mm_cvtph_ps(v);
}

// d and s of a q16 block (adjacent floats) as lanes 0 and 1.
inline __m128 act_scales(const block_q16* a) {
    return _mm_castpd_ps(_mm_load_sd((const double*)a));
}

// Sum of products of 32 int16 weight codes with 32 int16
// activation codes, as 8 int32 lanes.
inline __m256i dot_s16(__m256i w_lo, __m256i w_hi, __m256i a_lo, __m256i a_hi) {
    return _mm256_add_epi32(_mm256_madd_epi16(w_lo, a_lo), _mm256_madd_epi16(w_hi, a_hi));
}

// Per block: the R rows' scales (and minima) are gathered into one vector so
// each column needs one multiply for all R row x column scale products, and
// the _1 types' minimum terms accumulate as one vector per column (row r in
// lane r) instead of a scalar chain per (row, column). Weight codes are
// unpacked to int16 once per block and reused by every column.
template <class W, int R, int C>
void tile_kernel(int64_t n, const uint8_t* x, size_t bx, const uint8_t* y, size_t by, float* out,
                 size_t ldo) {
    using A = typename W::act;
    __m256 acc[R][C];
    __m128 macc[C];
    for (int c = 0; c < C; ++c) {
        macc[c] = _mm_setzero_ps();
        for (int r = 0; r < R; ++r) acc[r][c] = _mm256_setzero_ps();
    }
    const int64_t nb = n / 32;
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* xb = x + b * W::size;
        __m256i w_lo[R], w_hi[R];
        for (int r = 0; r < R; ++r) W::load(xb + r * bx, &w_lo[r], &w_hi[r]);
        const __m128 vwd = gather_half<R>(xb, bx);
        const __m128 vwm = W::has_min ? gather_half<R>(xb + 2, bx) : _mm_setzero_ps();
        for (int c = 0; c < C; ++c) {
            const A* a = (const A*)(y + c * by) + b;
            const __m256i a_lo = _mm256_loadu_si256((const __m256i*)a->qs);
            const __m256i a_hi = _mm256_loadu_si256((const __m256i*)(a->qs + 16));
            const __m128 as = act_scales(a);
            alignas(16) float ds[4];
            _mm_store_ps(ds, _mm_mul_ps(vwd, _mm_shuffle_ps(as, as, 0)));
            for (int r = 0; r < R; ++r) {
                const __m256 p = _mm256_cvtepi32_ps(dot_s16(w_lo[r], w_hi[r], a_lo, a_hi));
                acc[r][c] = _mm256_fmadd_ps(_mm256_broadcast_ss(&ds[r]), p, acc[r][c]);
            }
            if (W::has_min) macc[c] = _mm_fmadd_ps(vwm, _mm_shuffle_ps(as, as, 0x55), macc[c]);
        }
    }
    for (int c = 0; c < C; ++c) {
        alignas(16) float m[4];
        _mm_store_ps(m, macc[c]);
        for (int r = 0; r < R; ++r) out[c * ldo + r] = hsum(acc[r][c]) + m[r];
    }
}

// ---- K-quants ----
// A superblock is unpacked once per row into 8 x 32 unsigned codes and 8
// scale vectors (16 int16: 8 copies of s[2i], 8 of s[2i+1]) in L1, then
// every column reuses it: maddubs(u, y) -> madd(scale) sums each 16-group
// with its scale exactly in int32; the mins go through q8_K's bsums.
struct k_tile_row {
    __m256i u[8];
    __m256i sc[8];
    __m256i mn;  // 16 x int16
    float d, dm;
};

inline void k_scales_q4(const uint8_t* scales, k_tile_row* w) {
    // 6-bit scales/mins of 8 groups of 32; each serves two 16-groups.
    uint32_t a[3];
    __builtin_memcpy(a, scales, 12);
    const uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
    uint32_t sc[2], mn[2];
    sc[0] = a[0] & k1;
    mn[0] = a[1] & k1;
    sc[1] = (a[2] & k2) | (((a[0] >> 6) & k3) << 4);
    mn[1] = ((a[2] >> 4) & k2) | (((a[1] >> 6) & k3) << 4);
    const uint8_t* s8 = (const uint8_t*)sc;
    const uint8_t* m8 = (const uint8_t*)mn;
    for (int i = 0; i < 8; ++i) w->sc[i] = _mm256_set1_epi16(s8[i]);
    // Group g covers 16-groups 2g and 2g+1: widen each byte to two int16.
    const __m128i m = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i*)m8));
    w->mn = _mm256_set_m128i(_mm_unpackhi_epi16(m, m), _mm_unpacklo_epi16(m, m));
}

inline void k_unpack_q4_K(const uint8_t* p, k_tile_row* w) {
    const block_q4_K* b = (const block_q4_K*)p;
    w->d = h2f(b->d);
    w->dm = h2f(b->dmin);
    k_scales_q4(b->scales, w);
    const __m256i lo = _mm256_set1_epi8(0x0F);
    for (int j = 0; j < 4; ++j) {
        const __m256i q = _mm256_loadu_si256((const __m256i*)(b->qs + 32 * j));
        w->u[2 * j] = _mm256_and_si256(q, lo);
        w->u[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), lo);
    }
}

inline void k_unpack_q5_K(const uint8_t* p, k_tile_row* w) {
    const block_q5_K* b = (const block_q5_K*)p;
    w->d = h2f(b->d);
    w->dm = h2f(b->dmin);
    k_scales_q4(b->scales, w);
    const __m256i lo = _mm256_set1_epi8(0x0F), bit = _mm256_set1_epi8(0x10);
    const __m256i qh = _mm256_loadu_si256((const __m256i*)b->qh);
    for (int j = 0; j < 4; ++j) {
        const __m256i q = _mm256_loadu_si256((const __m256i*)(b->qs + 32 * j));
        // bit 2j of qh[l] -> 0x10 of element 64j+l; bit 2j+1 -> element 64j+32+l.
        const __m256i h0 = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * j), 4), bit);
        const __m256i h1 = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * j + 1), 4), bit);
        w->u[2 * j] = _mm256_or_si256(_mm256_and_si256(q, lo), h0);
        w->u[2 * j + 1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), lo), h1);
    }
}

inline void k_unpack_q6_K(const uint8_t* p, k_tile_row* w) {
    const block_q6_K* b = (const block_q6_K*)p;
    w->d = w->dm = h2f(b->d);
    const __m256i lo = _mm256_set1_epi8(0x0F), two = _mm256_set1_epi8(0x30);
    for (int h = 0; h < 2; ++h) {
        const __m256i ql0 = _mm256_loadu_si256((const __m256i*)(b->ql + 64 * h));
        const __m256i ql1 = _mm256_loadu_si256((const __m256i*)(b->ql + 64 * h + 32));
        const __m256i qh = _mm256_loadu_si256((const __m256i*)(b->qh + 32 * h));
        __m256i* u = w->u + 4 * h;
        u[0] = _mm256_or_si256(_mm256_and_si256(ql0, lo), _mm256_and_si256(_mm256_slli_epi16(qh, 4), two));
        u[1] = _mm256_or_si256(_mm256_and_si256(ql1, lo), _mm256_and_si256(_mm256_slli_epi16(qh, 2), two));
        u[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), lo), _mm256_and_si256(qh, two));
        u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), lo),
                               _mm256_and_si256(_mm256_srli_epi16(qh, 2), two));
    }
    const __m128i s8 = _mm_loadu_si128((const __m128i*)b->scales);
    const __m256i s16 = _mm256_cvtepi8_epi16(s8);
    w->mn = _mm256_slli_epi16(s16, 5);
    alignas(32) int16_t s[16];
    _mm256_store_si256((__m256i*)s, s16);
    for (int i = 0; i < 8; ++i)
        w->sc[i] = _mm256_set_m128i(_mm_set1_epi16(s[2 * i + 1]), _mm_set1_epi16(s[2 * i]));
}

template <void (*Unpack)(const uint8_t*, k_tile_row*), size_t Size, int R, int C>
void k_tile_kernel(int64_t n, const uint8_t* x, size_t bx, const uint8_t* y, size_t by, float* out,
                   size_t ldo) {
    __m256 acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
    k_tile_row w[R];
    for (int64_t b = 0; b < n / QK_K; ++b) {
        for (int r = 0; r < R; ++r) Unpack(x + r * bx + b * Size, &w[r]);
        for (int c = 0; c < C; ++c) {
            const block_q8_K* a = (const block_q8_K*)(y + c * by) + b;
            const __m256i bsums = _mm256_loadu_si256((const __m256i*)a->bsums);
            for (int r = 0; r < R; ++r) {
                __m256i isum = _mm256_setzero_si256();
                for (int i = 0; i < 8; ++i) {
                    const __m256i q = _mm256_loadu_si256((const __m256i*)(a->qs + 32 * i));
                    isum = _mm256_add_epi32(
                        isum, _mm256_madd_epi16(_mm256_maddubs_epi16(w[r].u[i], q), w[r].sc[i]));
                }
                const __m256i msum = _mm256_madd_epi16(bsums, w[r].mn);
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(w[r].d * a->d), _mm256_cvtepi32_ps(isum),
                                            acc[r][c]);
                acc[r][c] = _mm256_fnmadd_ps(_mm256_set1_ps(w[r].dm * a->d),
                                             _mm256_cvtepi32_ps(msum), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) out[c * ldo + r] = hsum(acc[r][c]);
}

struct k_q4_K {
    static constexpr size_t size = sizeof(block_q4_K);
    template <int R, int C>
    static void kernel(int64_t n, const uint8_t* x, size_t bx, const uint8_t* y, size_t by,
                       float* out, size_t ldo) {
        k_tile_kernel<k_unpack_q4_K, size, R, C>(n, x, bx, y, by, out, ldo);
    }
};
struct k_q5_K {
    static constexpr size_t size = sizeof(block_q5_K);
    template <int R, int C>
    static void kernel(int64_t n, const uint8_t* x, size_t bx, const uint8_t* y, size_t by,
                       float* out, size_t ldo) {
        k_tile_kernel<k_unpack_q5_K, size, R, C>(n, x, bx, y, by, out, ldo);
    }
};
struct k_q6_K {
    static constexpr size_t size = sizeof(block_q6_K);
    template <int R, int C>
    static void kernel(int64_t n, const uint8_t* x, size_t bx, const uint8_t* y, size_t by,
                       float* out, size_t ldo) {
        k_tile_kernel<k_unpack_q6_K, size, R, C>(n, x, bx, y, by, out, ldo);
    }
};

// Tile kernels of the 32-element block types under the interface the K-quant
// kernels have, so one driver serves both.
template <class W>
struct blk {
    template <int R, int C>
    static void kernel(int64_t n, const uint8_t* x, size_t bx, const uint8_t* y, size_t by,
                       float* out, size_t ldo) {
        tile_kernel<W, R, C>(n, x, bx, y, by, out, ldo);
    }
};


// The 32-element types against q16 activations: widened weight codes take
// two registers per row, so prefill tiles are 2 rows x 4 columns (8
// accumulators, 4 weight and 2 activation registers) and decode (one column)
// runs 4 rows at a time to keep 4 independent accumulation chains.
template <class W>
void gemm_tile_q16(int64_t n, const void* vx, size_t bx, const void* vy, size_t by, float* out,
                   size_t ldo, int nr, int nc) {
    using fn = void (*)(int64_t, const uint8_t*, size_t, const uint8_t*, size_t, float*, size_t);
    static const fn decode[4] = {tile_kernel<W, 1, 1>, tile_kernel<W, 2, 1>, tile_kernel<W, 3, 1>,
                                 tile_kernel<W, 4, 1>};
    static const fn prefill[2][4] = {
        {tile_kernel<W, 1, 1>, tile_kernel<W, 1, 2>, tile_kernel<W, 1, 3>, tile_kernel<W, 1, 4>},
        {tile_kernel<W, 2, 1>, tile_kernel<W, 2, 2>, tile_kernel<W, 2, 3>, tile_kernel<W, 2, 4>},
    };
    const uint8_t* x = (const uint8_t*)vx;
    const uint8_t* y = (const uint8_t*)vy;
    if (nc == 1) {
        for (int r = 0; r < nr; r += 4)
            decode[(nr - r < 4 ? nr - r : 4) - 1](n, x + r * bx, bx, y, by, out + r, ldo);
        return;
    }
    for (int c = 0; c < nc; c += 4) {
        const int cc = nc - c < 4 ? nc - c : 4;
        for (int r = 0; r < nr; r += 2) {
            const int rr = nr - r < 2 ? nr - r : 2;
            prefill[rr - 1][cc - 1](n, x + r * bx, bx, y + c * by, by, out + c * ldo + r, ldo);
        }
    }
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

// 32 floats -> q16 block, bit-identical to the reference quantizer.
void quant_q16(const float* x, void* vy, int64_t n) {
    block_q16* y = (block_q16*)vy;
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / 32; ++i, x += 32) {
        __m256 v[4], amax = _mm256_setzero_ps();
        for (int k = 0; k < 4; ++k) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, v[k]));
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float d = _mm_cvtss_f32(m) / 32767;
        const __m256 vid = _mm256_set1_ps(d ? 1.0f / d : 0.0f);
        __m256i q[4];
        for (int k = 0; k < 4; ++k) q[k] = round_away_epi32(_mm256_mul_ps(v[k], vid));
        const __m256i s8 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
        s4 = _mm_hadd_epi32(s4, s4);
        s4 = _mm_hadd_epi32(s4, s4);
        // packs interleaves 128-bit lanes; the permute restores element order.
        const __m256i p0 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xD8);
        const __m256i p1 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[2], q[3]), 0xD8);
        _mm256_storeu_si256((__m256i*)y[i].qs, p0);
        _mm256_storeu_si256((__m256i*)(y[i].qs + 16), p1);
        y[i].d = d;
        y[i].s = d * (float)_mm_cvtsi128_si32(s4);
    }
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

// q8_K: scale from the signed value of largest magnitude (first on ties),
// codes rounded half to even (cvtps_epi32 under the default rounding mode is
// exactly ggml's nearest_int), capped at 127.
void quant_q8_K(const float* x, void* vy, int64_t n) {
    block_q8_K* y = (block_q8_K*)vy;
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        __m256 amax = _mm256_setzero_ps();
        for (int k = 0; k < QK_K; k += 8)
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, _mm256_loadu_ps(x + k)));
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float a = _mm_cvtss_f32(m);
        if (a == 0.0f) {
            __builtin_memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        float max = a;
        const __m256 va = _mm256_set1_ps(a);
        for (int k = 0; k < QK_K; k += 8) {
            const __m256 v = _mm256_loadu_ps(x + k);
            const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign_mask, v), va, _CMP_EQ_OQ));
            if (hit) {
                max = x[k + __builtin_ctz(hit)];
                break;
            }
        }
        const float iscale = -127.0f / max;
        const __m256 vs = _mm256_set1_ps(iscale);
        const __m256i cap = _mm256_set1_epi32(127);
        for (int k = 0; k < QK_K; k += 32) {
            __m256i q[4];
            for (int j = 0; j < 4; ++j)
                q[j] = _mm256_min_epi32(
                    _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8 * j), vs)), cap);
            __m256i p8 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i*)(y[i].qs + k), p8);
            // 16-element sums: maddubs with ones (pairs), madd (quads), two hadds.
            const __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), p8);
            const __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
            // s32 lanes: 8 sums of 4; lanes 0-3 -> elements 0..15, 4-7 -> 16..31.
            const __m128i lo = _mm256_castsi256_si128(s32), hi = _mm256_extracti128_si256(s32, 1);
            const __m128i h = _mm_hadd_epi32(lo, hi);   // sums of 8: [0-7, 8-15, 16-23, 24-31]
            const __m128i g = _mm_hadd_epi32(h, h);     // [0-15, 16-31, ...]
            y[i].bsums[k / 16] = (int16_t)_mm_cvtsi128_si32(g);
            y[i].bsums[k / 16 + 1] = (int16_t)_mm_extract_epi32(g, 1);
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
        case GGML_TYPE_Q4_K: return tile_vec_dot<k_q4_K>;
        case GGML_TYPE_Q5_K: return tile_vec_dot<k_q5_K>;
        case GGML_TYPE_Q6_K: return tile_vec_dot<k_q6_K>;
        case GGML_TYPE_F16: return vec_dot_f16;
        case GGML_TYPE_F32: return vec_dot_f32;
        default: return nullptr;
    }
}

gemm_tile_fn simd_gemm_tile(ggml_type t) {
    switch (t) {
        case GGML_TYPE_Q4_0: return gemm_tile_q16<w_q4_0>;
        case GGML_TYPE_Q4_1: return gemm_tile_q16<w_q4_1>;
        case GGML_TYPE_Q5_0: return gemm_tile_q16<w_q5_0>;
        case GGML_TYPE_Q5_1: return gemm_tile_q16<w_q5_1>;
        case GGML_TYPE_Q8_0: return gemm_tile_q16<w_q8_0>;
        case GGML_TYPE_Q4_K: return gemm_tile_4x2<k_q4_K>;
        case GGML_TYPE_Q5_K: return gemm_tile_4x2<k_q5_K>;
        case GGML_TYPE_Q6_K: return gemm_tile_4x2<k_q6_K>;
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

const char* simd_name() { return "AVX2"; }

}  // namespace kvrt

#endif
