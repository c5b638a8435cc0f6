#include "kv_kernels.h"

#include <algorithm>
#include <cmath>

#include "../kv_layout.h"
#include "../quants.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define KVRT_KV_AVX2 1
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#define KVRT_KV_NEON 1
#endif

namespace kvrt {

// ---------------------------------------------------------------------------
// Scalar reference.

void kv_unpack32_f32_ref(const uint8_t* g, int bits, float* out) {
    for (int i = 0; i < KV_GROUP; ++i) out[i] = (float)kv_code_get(g, bits, i);
}

void kv_cmajor_scores_ref(const uint8_t* blk, const uint8_t* bits, int n_ch, const float* w,
                          int n_rep, float* s) {
    for (int i = 0; i < n_rep * KV_GROUP; ++i) s[i] = 0.0f;
    for (int c = 0; c < n_ch; ++c) {
        for (int t = 0; t < KV_GROUP; ++t) {
            const float code = (float)kv_code_get(blk, bits[c], t);
            for (int r = 0; r < n_rep; ++r) s[r * KV_GROUP + t] += w[r * n_ch + c] * code;
        }
        blk += kv_group_bytes(bits[c]);
    }
}

void kv_cmajor_accumulate_ref(const uint8_t* blk, const uint8_t* bits, int n_ch,
                              const float* p, int n_rep, float* acc, int ld) {
    for (int c = 0; c < n_ch; ++c) {
        for (int r = 0; r < n_rep; ++r) {
            float sum = 0.0f;
            for (int t = 0; t < KV_GROUP; ++t)
                sum += p[r * KV_GROUP + t] * (float)kv_code_get(blk, bits[c], t);
            acc[r * ld + c] += sum;
        }
        blk += kv_group_bytes(bits[c]);
    }
}

// ---------------------------------------------------------------------------
// Unpacking: 8 codes of b bits are exactly b bytes, so each run of 8 is one
// little-endian word shifted by constants once b is a template parameter.

template <int B>
static inline void unpack32_u8(const uint8_t* g, uint8_t* out) {
    if constexpr (B == 8) {
        for (int i = 0; i < 32; ++i) out[i] = g[i];
    } else if constexpr (B == 4) {
        for (int i = 0; i < 16; ++i) {
            out[2 * i] = g[i] & 15;
            out[2 * i + 1] = g[i] >> 4;
        }
    } else if constexpr (B == 2) {
        for (int i = 0; i < 8; ++i)
            for (int k = 0; k < 4; ++k) out[4 * i + k] = (g[i] >> (2 * k)) & 3;
    } else {
        for (int j = 0; j < 4; ++j) {
            uint64_t w = 0;
            for (int b = 0; b < B; ++b) w |= (uint64_t)g[j * B + b] << (8 * b);
            for (int k = 0; k < 8; ++k) out[8 * j + k] = (uint8_t)((w >> (k * B)) & ((1u << B) - 1));
        }
    }
}

static inline void unpack32_u8_any(const uint8_t* g, int bits, uint8_t* out) {
    switch (bits) {
        case 1: unpack32_u8<1>(g, out); break;
        case 2: unpack32_u8<2>(g, out); break;
        case 3: unpack32_u8<3>(g, out); break;
        case 4: unpack32_u8<4>(g, out); break;
        case 5: unpack32_u8<5>(g, out); break;
        case 6: unpack32_u8<6>(g, out); break;
        case 7: unpack32_u8<7>(g, out); break;
        default: unpack32_u8<8>(g, out); break;
    }
}

void kv_unpack32_f32(const uint8_t* g, int bits, float* out) {
    alignas(32) uint8_t u[32];
    unpack32_u8_any(g, bits, u);
#if KVRT_KV_AVX2
    for (int i = 0; i < 32; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                                      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(u + i)))));
#else
    for (int i = 0; i < 32; ++i) out[i] = u[i];
#endif
}

// ---------------------------------------------------------------------------
// Channel-major kernels: one channel's 32 tokens are unpacked once and used
// by every query row of the group (grouped-query attention).

void kv_cmajor_scores(const uint8_t* blk, const uint8_t* bits, int n_ch, const float* w,
                      int n_rep, float* s) {
#if KVRT_KV_AVX2
    constexpr int kMaxRep = 3;  // 4 accumulators a row + 4 code vectors fit 16 registers
    if (n_rep <= kMaxRep) {
        __m256 acc[kMaxRep][4];
        for (int r = 0; r < n_rep; ++r)
            for (int k = 0; k < 4; ++k) acc[r][k] = _mm256_setzero_ps();
        alignas(32) float x[32];
        for (int c = 0; c < n_ch; ++c) {
            kv_unpack32_f32(blk, bits[c], x);
            blk += kv_group_bytes(bits[c]);
            const __m256 x0 = _mm256_load_ps(x), x1 = _mm256_load_ps(x + 8);
            const __m256 x2 = _mm256_load_ps(x + 16), x3 = _mm256_load_ps(x + 24);
            for (int r = 0; r < n_rep; ++r) {
                const __m256 wr = _mm256_broadcast_ss(w + r * n_ch + c);
                acc[r][0] = _mm256_fmadd_ps(wr, x0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(wr, x1, acc[r][1]);
                acc[r][2] = _mm256_fmadd_ps(wr, x2, acc[r][2]);
                acc[r][3] = _mm256_fmadd_ps(wr, x3, acc[r][3]);
            }
        }
        for (int r = 0; r < n_rep; ++r)
            for (int k = 0; k < 4; ++k) _mm256_storeu_ps(s + r * 32 + 8 * k, acc[r][k]);
        return;
    }
#elif KVRT_KV_NEON
    constexpr int kMaxRep = 3;  // 8 accumulators a row + 8 code vectors fit 32 registers
    if (n_rep <= kMaxRep) {
        float32x4_t acc[kMaxRep][8];
        for (int r = 0; r < n_rep; ++r)
            for (int k = 0; k < 8; ++k) acc[r][k] = vdupq_n_f32(0.0f);
        alignas(16) float x[32];
        for (int c = 0; c < n_ch; ++c) {
            kv_unpack32_f32(blk, bits[c], x);
            blk += kv_group_bytes(bits[c]);
            float32x4_t xv[8];
            for (int k = 0; k < 8; ++k) xv[k] = vld1q_f32(x + 4 * k);
            for (int r = 0; r < n_rep; ++r) {
                const float wr = w[r * n_ch + c];
                for (int k = 0; k < 8; ++k) acc[r][k] = vfmaq_n_f32(acc[r][k], xv[k], wr);
            }
        }
        for (int r = 0; r < n_rep; ++r)
            for (int k = 0; k < 8; ++k) vst1q_f32(s + r * 32 + 4 * k, acc[r][k]);
        return;
    }
#endif
    for (int i = 0; i < n_rep * 32; ++i) s[i] = 0.0f;
    alignas(32) float x[32];
    for (int c = 0; c < n_ch; ++c) {
        kv_unpack32_f32(blk, bits[c], x);
        blk += kv_group_bytes(bits[c]);
        for (int r = 0; r < n_rep; ++r) {
            const float wr = w[r * n_ch + c];
            float* sr = s + r * 32;
            for (int t = 0; t < 32; ++t) sr[t] += wr * x[t];
        }
    }
}

void kv_cmajor_accumulate(const uint8_t* blk, const uint8_t* bits, int n_ch, const float* p,
                          int n_rep, float* acc, int ld) {
    alignas(32) float x[32];
    for (int c = 0; c < n_ch; ++c) {
        kv_unpack32_f32(blk, bits[c], x);
        blk += kv_group_bytes(bits[c]);
        for (int r = 0; r < n_rep; ++r) {
            const float* pr = p + r * 32;
#if KVRT_KV_AVX2
            __m256 a = _mm256_mul_ps(_mm256_loadu_ps(pr), _mm256_load_ps(x));
            a = _mm256_fmadd_ps(_mm256_loadu_ps(pr + 8), _mm256_load_ps(x + 8), a);
            a = _mm256_fmadd_ps(_mm256_loadu_ps(pr + 16), _mm256_load_ps(x + 16), a);
            a = _mm256_fmadd_ps(_mm256_loadu_ps(pr + 24), _mm256_load_ps(x + 24), a);
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            h = _mm_add_ss(h, _mm_movehdup_ps(h));
            acc[r * ld + c] += _mm_cvtss_f32(h);
#else
            float sum = 0.0f;
            for (int t = 0; t < 32; ++t) sum += pr[t] * x[t];
            acc[r * ld + c] += sum;
#endif
        }
    }
}

const char* kv_kernels_simd_name() {
#if KVRT_KV_AVX2
    return "AVX2";
#elif KVRT_KV_NEON
    return "NEON";
#else
    return "scalar";
#endif
}

// ---------------------------------------------------------------------------
// Token-major affine groups.

float kv_affine_dot(const uint8_t* grp, int bits, const float* q) {
    const uint16_t* hdr = reinterpret_cast<const uint16_t*>(grp);
    const float scale = fp16_to_fp32(hdr[0]), mn = fp16_to_fp32(hdr[1]);
    alignas(32) float x[32];
    kv_unpack32_f32(grp + 4, bits, x);
    float dot = 0.0f, qs = 0.0f;
    for (int i = 0; i < 32; ++i) {
        dot += q[i] * x[i];
        qs += q[i];
    }
    return scale * dot + mn * qs;
}

void kv_affine_axpy(const uint8_t* grp, int bits, float a, float* out) {
    const uint16_t* hdr = reinterpret_cast<const uint16_t*>(grp);
    const float as = a * fp16_to_fp32(hdr[0]), am = a * fp16_to_fp32(hdr[1]);
    alignas(32) float x[32];
    kv_unpack32_f32(grp + 4, bits, x);
    for (int i = 0; i < 32; ++i) out[i] += as * x[i] + am;
}

void kv_affine_quantize32(const float* x, int stride, int bits, uint16_t* scale, uint16_t* min,
                          uint8_t* g) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < 32; ++i) {
        lo = std::min(lo, x[i * stride]);
        hi = std::max(hi, x[i * stride]);
    }
    const int qmax = (1 << bits) - 1;
    *min = fp32_to_fp16(lo);
    *scale = fp32_to_fp16((hi - lo) / qmax);
    const float mn = fp16_to_fp32(*min), sc = fp16_to_fp32(*scale);
    const float inv = sc > 0.0f ? 1.0f / sc : 0.0f;
    uint8_t codes[32];
    for (int i = 0; i < 32; ++i) {
        const float c = std::nearbyint((x[i * stride] - mn) * inv);
        codes[i] = (uint8_t)std::clamp(c, 0.0f, (float)qmax);
    }
    kv_pack32(codes, bits, g);
}

void kv_fwht(float* x, int n) {
    for (int len = 1; len < n; len <<= 1)
        for (int i = 0; i < n; i += 2 * len)
            for (int j = i; j < i + len; ++j) {
                const float a = x[j], b = x[j + len];
                x[j] = a + b;
                x[j + len] = a - b;
            }
    const float norm = 1.0f / std::sqrt((float)n);
    for (int i = 0; i < n; ++i) x[i] *= norm;
}

}  // namespace kvrt

namespace kvrt {

void kv_dot_rows(const float* q, int n_rep, int n, const float* x, float* s, int ld) {
    for (int r = 0; r < n_rep; ++r) {
        const float* qr = q + (size_t)r * n;
        int d = 0;
        float sum = 0.0f;
#if KVRT_KV_AVX2
        __m256 a = _mm256_setzero_ps();
        for (; d + 8 <= n; d += 8)
            a = _mm256_fmadd_ps(_mm256_loadu_ps(qr + d), _mm256_loadu_ps(x + d), a);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        sum = _mm_cvtss_f32(h);
#endif
        for (; d < n; ++d) sum += qr[d] * x[d];
        s[(size_t)r * ld] = sum;
    }
}

void kv_axpy_rows(const float* p, int ld, int n_rep, const float* x, int n, float* out) {
    for (int r = 0; r < n_rep; ++r) {
        const float a = p[(size_t)r * ld];
        float* o = out + (size_t)r * n;
        for (int d = 0; d < n; ++d) o[d] += a * x[d];
    }
}

}  // namespace kvrt
