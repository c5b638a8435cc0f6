#include "kv_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

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

#if KVRT_KV_AVX2
// The B bytes of run j (codes 8j..8j+7) of a group of 32 B-bit codes, in
// the low bytes of a word, read with whole 8-byte loads that stay inside
// the group's 4*B bytes (a byte-wise copy would stall store forwarding).
template <int B>
static inline uint64_t run_bits(const uint8_t* g, int j) {
    if constexpr (B == 1) {
        uint32_t w;
        std::memcpy(&w, g, 4);
        return w >> (8 * j);
    } else if constexpr (B == 2) {
        uint64_t w;
        std::memcpy(&w, g, 8);
        return w >> (16 * j);
    } else {
        uint64_t w;
        if (j * B + 8 <= 4 * B) {
            std::memcpy(&w, g + j * B, 8);
            return w;
        }
        std::memcpy(&w, g + (j + 1) * B - 8, 8);  // ends where run j ends
        return w >> (8 * (8 - B));
    }
}

// 8 codes of B bits are B bytes. Each 32-bit lane k gets the two bytes
// holding code k (a byte shuffle of the B bytes copied to both halves), is
// shifted right by its bit offset and masked.
template <int B>
struct unpack_ctl {
    alignas(32) int8_t shuf[32];
    alignas(32) int32_t shift[8];
    constexpr unpack_ctl() : shuf(), shift() {
        for (int k = 0; k < 8; ++k) {
            const int off = k * B / 8, lane = k % 4 * 4 + (k >= 4 ? 16 : 0);
            shuf[lane] = (int8_t)off;
            shuf[lane + 1] = (int8_t)(off + 1 < B ? off + 1 : -128);
            shuf[lane + 2] = shuf[lane + 3] = (int8_t)-128;
            shift[k] = k * B % 8;
        }
    }
};
template <int B>
inline constexpr unpack_ctl<B> kUnpackCtl{};

template <int B>
static inline __attribute__((always_inline)) void unpack32_ps(const uint8_t* g, __m256 x[4]) {
    const __m256i shuf = _mm256_load_si256(reinterpret_cast<const __m256i*>(kUnpackCtl<B>.shuf));
    const __m256i shift = _mm256_load_si256(reinterpret_cast<const __m256i*>(kUnpackCtl<B>.shift));
    const __m256i mask = _mm256_set1_epi32((1 << B) - 1);
    for (int j = 0; j < 4; ++j) {
        const uint64_t w = run_bits<B>(g, j);
        const __m256i v = _mm256_broadcastsi128_si256(_mm_cvtsi64_si128((long long)w));
        const __m256i codes = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(v, shuf), shift), mask);
        x[j] = _mm256_cvtepi32_ps(codes);
    }
}

static inline void unpack32_ps_any(const uint8_t* g, int bits, __m256 x[4]) {
    switch (bits) {
        case 1: unpack32_ps<1>(g, x); break;
        case 2: unpack32_ps<2>(g, x); break;
        case 3: unpack32_ps<3>(g, x); break;
        case 4: unpack32_ps<4>(g, x); break;
        case 5: unpack32_ps<5>(g, x); break;
        case 6: unpack32_ps<6>(g, x); break;
        case 7: unpack32_ps<7>(g, x); break;
        default: unpack32_ps<8>(g, x); break;
    }
}

// f(c, x) for channels [c, e) of width B, x their 32 codes as floats.
template <int B, class F>
static inline __attribute__((always_inline)) void unpack_run(const uint8_t*& blk, int c, int e, F& f) {
    for (; c < e; ++c, blk += 4 * B) {
        __m256 x[4];
        unpack32_ps<B>(blk, x);
        f(c, x);
    }
}

// f(c, x) for every channel of a channel-major block in order; the width is
// dispatched once per run of equal widths (a plan's widths come in runs),
// not once per channel.
template <class F>
static inline __attribute__((always_inline)) void for_each_channel(const uint8_t* blk,
                                                                   const uint8_t* bits, int n_ch,
                                                                   F&& f) {
    for (int c = 0; c < n_ch;) {
        const int b = bits[c];
        int e = c + 1;
        while (e < n_ch && bits[e] == b) ++e;
        switch (b) {
            case 1: unpack_run<1>(blk, c, e, f); break;
            case 2: unpack_run<2>(blk, c, e, f); break;
            case 3: unpack_run<3>(blk, c, e, f); break;
            case 4: unpack_run<4>(blk, c, e, f); break;
            case 5: unpack_run<5>(blk, c, e, f); break;
            case 6: unpack_run<6>(blk, c, e, f); break;
            case 7: unpack_run<7>(blk, c, e, f); break;
            default: unpack_run<8>(blk, c, e, f); break;
        }
        c = e;
    }
}
#endif

void kv_unpack32_f32(const uint8_t* g, int bits, float* out) {
#if KVRT_KV_AVX2
    __m256 x[4];
    unpack32_ps_any(g, bits, x);
    for (int i = 0; i < 4; ++i) _mm256_storeu_ps(out + 8 * i, x[i]);
#else
    alignas(32) uint8_t u[32];
    unpack32_u8_any(g, bits, u);
    for (int i = 0; i < 32; ++i) out[i] = u[i];
#endif
}

#if KVRT_KV_AVX2
// R query rows (a compile-time count, so the accumulators stay in registers).
template <int R>
static void cmajor_scores_rows(const uint8_t* blk, const uint8_t* bits, int n_ch, const float* w,
                               float* s) {
    __m256 acc[R][4];
    for (int r = 0; r < R; ++r)
        for (int k = 0; k < 4; ++k) acc[r][k] = _mm256_setzero_ps();
    for_each_channel(blk, bits, n_ch, [&](int c, const __m256* x) {
        for (int r = 0; r < R; ++r) {
            const __m256 wr = _mm256_broadcast_ss(w + r * n_ch + c);
            for (int k = 0; k < 4; ++k) acc[r][k] = _mm256_fmadd_ps(wr, x[k], acc[r][k]);
        }
    });
    for (int r = 0; r < R; ++r)
        for (int k = 0; k < 4; ++k) _mm256_storeu_ps(s + r * 32 + 8 * k, acc[r][k]);
}
#endif

// ---------------------------------------------------------------------------
// Channel-major kernels: one channel's 32 tokens are unpacked once and used
// by every query row of the group (grouped-query attention).

void kv_cmajor_scores(const uint8_t* blk, const uint8_t* bits, int n_ch, const float* w,
                      int n_rep, float* s) {
#if KVRT_KV_AVX2
    // Up to 3 rows: 4 accumulators a row + 4 code vectors fit 16 registers.
    switch (n_rep) {
        case 1: return cmajor_scores_rows<1>(blk, bits, n_ch, w, s);
        case 2: return cmajor_scores_rows<2>(blk, bits, n_ch, w, s);
        case 3: return cmajor_scores_rows<3>(blk, bits, n_ch, w, s);
        default: break;
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
#if KVRT_KV_AVX2
    // Channels in chunks of 64: a chunk's codes as floats first (8 KiB, in
    // L1; widths dispatched once per run), then eight channels at a time per
    // row, their eight dot products reduced together (hadd tree).
    alignas(32) float xb[64][32];
    for (int cc = 0; cc < n_ch; cc += 64) {
        const int nc = std::min(64, n_ch - cc);
        for_each_channel(blk, bits + cc, nc, [&](int c, const __m256* x) {
            for (int i = 0; i < 4; ++i) _mm256_store_ps(xb[c] + 8 * i, x[i]);
        });
        for (int c = 0; c < nc; ++c) blk += kv_group_bytes(bits[cc + c]);
        for (int c0 = 0; c0 < nc; c0 += 8) {
            const int m = std::min(8, nc - c0);
            for (int r = 0; r < n_rep; ++r) {
                const float* pr = p + r * 32;
                const __m256 p0 = _mm256_loadu_ps(pr), p1 = _mm256_loadu_ps(pr + 8);
                const __m256 p2 = _mm256_loadu_ps(pr + 16), p3 = _mm256_loadu_ps(pr + 24);
                __m256 a[8];
                for (int k = 0; k < 8; ++k) {
                    if (k >= m) {
                        a[k] = _mm256_setzero_ps();
                        continue;
                    }
                    const float* x = xb[c0 + k];
                    __m256 t = _mm256_mul_ps(p0, _mm256_load_ps(x));
                    t = _mm256_fmadd_ps(p1, _mm256_load_ps(x + 8), t);
                    t = _mm256_fmadd_ps(p2, _mm256_load_ps(x + 16), t);
                    a[k] = _mm256_fmadd_ps(p3, _mm256_load_ps(x + 24), t);
                }
                const __m256 g0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
                const __m256 g1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
                const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(g0, g1, 0x20),
                                                 _mm256_permute2f128_ps(g0, g1, 0x31));
                float* dst = acc + r * ld + cc + c0;
                if (m == 8) {
                    _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), sum));
                } else {
                    alignas(32) float tmp[8];
                    _mm256_store_ps(tmp, sum);
                    for (int k = 0; k < m; ++k) dst[k] += tmp[k];
                }
            }
        }
    }
#else
    alignas(32) float x[32];
    for (int c = 0; c < n_ch; ++c) {
        kv_unpack32_f32(blk, bits[c], x);
        blk += kv_group_bytes(bits[c]);
        for (int r = 0; r < n_rep; ++r) {
            const float* pr = p + r * 32;
            float sum = 0.0f;
            for (int t = 0; t < 32; ++t) sum += pr[t] * x[t];
            acc[r * ld + c] += sum;
        }
    }
#endif
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

// ---------------------------------------------------------------------------
// Softmax numerators. exp by range reduction x = n ln2 + r, |r| <= ln2/2,
// and a degree-6 polynomial for exp(r) (Cephes' expf coefficients); 2^n
// goes straight into the exponent bits. Inputs are clamped at -87 so 2^n
// stays a normal float (exp(-87) ~ 1.6e-38: nothing a softmax can see).

namespace kvrt {

namespace {

constexpr float kExpLo = -87.0f, kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                            4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

#if KVRT_KV_AVX2
inline __m256 exp_ps(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(kExpLo));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
    __m256 p = _mm256_set1_ps(kExpP[0]);
    for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP[i]));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#elif KVRT_KV_NEON
inline float32x4_t exp_f32x4(float32x4_t x) {
    x = vmaxq_f32(x, vdupq_n_f32(kExpLo));
    const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(kLog2e)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(kLn2Hi));
    r = vfmsq_f32(r, n, vdupq_n_f32(kLn2Lo));
    float32x4_t p = vdupq_n_f32(kExpP[0]);
    for (int i = 1; i < 6; ++i) p = vfmaq_f32(vdupq_n_f32(kExpP[i]), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}
#endif

}  // namespace

float kv_max(const float* x, int n) {
    float m = x[0];
    int j = 0;
#if KVRT_KV_AVX2
    if (n >= 8) {
        __m256 v = _mm256_loadu_ps(x);
        for (j = 8; j + 8 <= n; j += 8) v = _mm256_max_ps(v, _mm256_loadu_ps(x + j));
        float t[8];
        _mm256_storeu_ps(t, v);
        for (float u : t) m = std::max(m, u);
    }
#elif KVRT_KV_NEON
    if (n >= 4) {
        float32x4_t v = vld1q_f32(x);
        for (j = 4; j + 4 <= n; j += 4) v = vmaxq_f32(v, vld1q_f32(x + j));
        m = std::max(m, vmaxvq_f32(v));
    }
#endif
    for (; j < n; ++j) m = std::max(m, x[j]);
    return m;
}

float kv_softmax_exp_ref(float* x, int n, float m) {
    float l = 0.0f;
    for (int j = 0; j < n; ++j) {
        x[j] = std::exp(x[j] - m);
        l += x[j];
    }
    return l;
}

float kv_softmax_exp(float* x, int n, float m) {
    int j = 0;
    float l = 0.0f;
#if KVRT_KV_AVX2
    const __m256 vm = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8) {
        const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
        _mm256_storeu_ps(x + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    float t[8];
    _mm256_storeu_ps(t, acc);
    for (float u : t) l += u;
#elif KVRT_KV_NEON
    const float32x4_t vm = vdupq_n_f32(m);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (; j + 4 <= n; j += 4) {
        const float32x4_t e = exp_f32x4(vsubq_f32(vld1q_f32(x + j), vm));
        vst1q_f32(x + j, e);
        acc = vaddq_f32(acc, e);
    }
    l = vaddvq_f32(acc);
#endif
    return l + kv_softmax_exp_ref(x + j, n - j, m);
}

}  // namespace kvrt

namespace kvrt {

void kv_run_scores_ref(const float* w, int k, const float* tab, int n_rep, float* s) {
    for (int r = 0; r < n_rep; ++r)
        for (int j = 0; j < KV_BLOCK_TOKENS; ++j) {
            float acc = 0.0f;
            for (int i = 0; i < k; ++i) acc += w[(size_t)r * k + i] * tab[(size_t)i * KV_BLOCK_TOKENS + j];
            s[(size_t)r * KV_BLOCK_TOKENS + j] = acc;
        }
}

void kv_run_scores(const float* w, int k, const float* tab, int n_rep, float* s) {
#if KVRT_KV_AVX2
    // Two rows at a time: eight accumulators, each table row loaded once.
    int r = 0;
    for (; r + 2 <= n_rep; r += 2) {
        const float* w0 = w + (size_t)r * k;
        const float* w1 = w0 + k;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int i = 0; i < k; ++i) {
            const float* t = tab + (size_t)i * KV_BLOCK_TOKENS;
            const __m256 t0 = _mm256_loadu_ps(t), t1 = _mm256_loadu_ps(t + 8);
            const __m256 t2 = _mm256_loadu_ps(t + 16), t3 = _mm256_loadu_ps(t + 24);
            const __m256 x = _mm256_set1_ps(w0[i]), y = _mm256_set1_ps(w1[i]);
            a0 = _mm256_fmadd_ps(x, t0, a0);
            a1 = _mm256_fmadd_ps(x, t1, a1);
            a2 = _mm256_fmadd_ps(x, t2, a2);
            a3 = _mm256_fmadd_ps(x, t3, a3);
            b0 = _mm256_fmadd_ps(y, t0, b0);
            b1 = _mm256_fmadd_ps(y, t1, b1);
            b2 = _mm256_fmadd_ps(y, t2, b2);
            b3 = _mm256_fmadd_ps(y, t3, b3);
        }
        float* o = s + (size_t)r * KV_BLOCK_TOKENS;
        _mm256_storeu_ps(o, a0);
        _mm256_storeu_ps(o + 8, a1);
        _mm256_storeu_ps(o + 16, a2);
        _mm256_storeu_ps(o + 24, a3);
        _mm256_storeu_ps(o + 32, b0);
        _mm256_storeu_ps(o + 40, b1);
        _mm256_storeu_ps(o + 48, b2);
        _mm256_storeu_ps(o + 56, b3);
    }
    for (; r < n_rep; ++r) {
        const float* w0 = w + (size_t)r * k;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < k; ++i) {
            const float* t = tab + (size_t)i * KV_BLOCK_TOKENS;
            const __m256 x = _mm256_set1_ps(w0[i]);
            a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(t), a0);
            a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(t + 8), a1);
            a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(t + 16), a2);
            a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(t + 24), a3);
        }
        float* o = s + (size_t)r * KV_BLOCK_TOKENS;
        _mm256_storeu_ps(o, a0);
        _mm256_storeu_ps(o + 8, a1);
        _mm256_storeu_ps(o + 16, a2);
        _mm256_storeu_ps(o + 24, a3);
    }
#elif KVRT_KV_NEON
    for (int r = 0; r < n_rep; ++r) {
        const float* w0 = w + (size_t)r * k;
        float32x4_t a[8];
        for (auto& v : a) v = vdupq_n_f32(0.0f);
        for (int i = 0; i < k; ++i) {
            const float* t = tab + (size_t)i * KV_BLOCK_TOKENS;
            for (int q = 0; q < 8; ++q) a[q] = vfmaq_n_f32(a[q], vld1q_f32(t + 4 * q), w0[i]);
        }
        for (int q = 0; q < 8; ++q) vst1q_f32(s + (size_t)r * KV_BLOCK_TOKENS + 4 * q, a[q]);
    }
#else
    kv_run_scores_ref(w, k, tab, n_rep, s);
#endif
}

}  // namespace kvrt
