/* Packed KV cache layouts: the contract every backend (CPU, CUDA, Metal)
 * reads and writes byte for byte. Plain C so .cpp, .cu and .metal share it.
 *
 * Codes. An unsigned b-bit code (1 <= b <= 8) group holds 32 codes packed as
 * a little-endian bit stream: code i occupies bits [i*b, i*b + b) of the
 * group's 4*b bytes. The 32 codes are 32 tokens of one channel
 * (channel-major formats) or 32 channels of one token (token-major ones).
 *
 * Per layer, keys and values are separate streams, each in one format:
 *
 *  f32, f16   [pos][head][dim]
 *  q8_0, q4_0 [pos][head][dim/32] ggml blocks (quant_blocks.h), as llama.cpp
 *  affine:b   keys (KIVI): channel-major blocks of KV_BLOCK_TOKENS tokens,
 *             [head][block] of { half scale[dim]; half min[dim];
 *             codes[dim][4*b] }, x = min + scale*code per channel; the
 *             newest, still incomplete block waits in an f16 staging area
 *             [head][KV_BLOCK_TOKENS][dim] and is quantized when it fills.
 *             values: token-major [pos][head][dim/32] of { half scale; half
 *             min; codes[4*b] } over 32 channels of one token.
 *  rot:b      y = H·diag(sign)·x / sqrt(dim) (Walsh-Hadamard, fixed random
 *             signs; dim a power of two), then token-major groups of `dim`
 *             channels: [pos][head] { half scale; half min; codes[dim/32][4*b] }.
 *             Needs no calibration.
 *  pca        y = P(x - mu) in a calibrated per-(layer, head) basis, channels
 *             sorted by variance; per token and head a one-byte scale
 *             code for a_t >= max_c |y_c|/sigma_c, [head][pos]
 *             (kv_pca_scale_code); channel c has
 *             b_c in {0..8} bits with a static quantizer
 *             y_c = a_t * (lo_c + step_c*code) (lo, step, sigma from
 *             calibration, not stored in the cache). Channel-major blocks
 *             [head][block] of { codes of each channel with b_c > 0, in
 *             channel order, 4*b_c bytes each }; b_c = 0 channels are
 *             truncated. The first KV_PCA_SINKS positions are kept as half
 *             y of every channel, [head][KV_PCA_SINKS][dim]. Keys may
 *             first lose a calibrated pre-RoPE mean m turned to their
 *             position: x - R_pos m (R_pos the model's rotary rotation).
 *
 * Bits per element count every byte the allocator holds for the streams
 * (codes, scales, minima, staging) over n_ctx * layers * 2 * heads * dim.
 */
#ifndef KVRT_KV_LAYOUT_H
#define KVRT_KV_LAYOUT_H

#include <stdint.h>
#include <string.h>

#include "quant_blocks.h"

#define KV_BLOCK_TOKENS 32 /* tokens per channel-major block */
#define KV_GROUP 32        /* codes per packed group */
#define KV_MAX_BITS 8
#define KV_PCA_SINKS 4     /* first positions of a pca stream kept as half y */

/* The helpers below serve host and device code alike (CUDA kernels pack
 * and read codes with them). */
#if defined(__CUDACC__)
#define KV_INLINE static inline __host__ __device__
#else
#define KV_INLINE static inline
#endif

/* Bytes of one packed group of 32 b-bit codes. */
KV_INLINE int kv_group_bytes(int bits) { return 4 * bits; }

/* Bytes of one token-major affine group (scale, min, 32 codes). */
KV_INLINE int kv_affine_group_bytes(int bits) { return 4 + kv_group_bytes(bits); }

/* Code i of a packed group. */
KV_INLINE unsigned kv_code_get(const uint8_t* g, int bits, int i) {
    const int bit = i * bits;
    /* A code spans at most two bytes (bits <= 8). */
    unsigned w = g[bit >> 3];
    if ((bit & 7) + bits > 8) w |= (unsigned)g[(bit >> 3) + 1] << 8;
    return (w >> (bit & 7)) & ((1u << bits) - 1u);
}

/* Sets code i of a packed group (other codes kept). */
KV_INLINE void kv_code_set(uint8_t* g, int bits, int i, unsigned code) {
    const int bit = i * bits;
    const unsigned mask = ((1u << bits) - 1u) << (bit & 7);
    const unsigned v = (code << (bit & 7)) & mask;
    g[bit >> 3] = (uint8_t)((g[bit >> 3] & ~mask) | v);
    if ((bit & 7) + bits > 8) {
        const int j = (bit >> 3) + 1;
        g[j] = (uint8_t)((g[j] & ~(mask >> 8)) | (v >> 8));
    }
}

/* A pca token scale in one byte: code = 16 * (e + 8) + k stands for
 * (1 + k/16) * 2^e, e in -8..7, k in 0..15: [2^-8, 496], each octave in 16
 * equal steps. Both directions are exact integer arithmetic on the float's
 * bits, so host and device agree to the bit. */
KV_INLINE float kv_pca_scale_value(uint8_t code) {
    const uint32_t bits = ((uint32_t)(code >> 4) + 119u) << 23 | (uint32_t)(code & 15) << 19;
    float a;
    memcpy(&a, &bits, sizeof a);
    return a;
}

/* The code of the smallest representable scale >= a (a > 0, finite; below
 * 2^-8 gives code 0, above 496 code 255). Rounding up keeps every channel
 * of the token inside its quantizer's range. */
KV_INLINE uint8_t kv_pca_scale_code(float a) {
    uint32_t bits;
    memcpy(&bits, &a, sizeof bits);
    int e = (int)(bits >> 23 & 255u) - 127;
    uint32_t k = ((bits & 0x7fffffu) + (1u << 19) - 1u) >> 19;
    if (k == 16) k = 0, ++e;
    if (e < -8) return 0;
    if (e > 7) return 255;
    return (uint8_t)(16 * (e + 8) + (int)k);
}

/* Packs 32 codes (each < 2^bits) into a group of 4*bits bytes. */
KV_INLINE void kv_pack32(const uint8_t* codes, int bits, uint8_t* g) {
    memset(g, 0, (size_t)kv_group_bytes(bits));
    for (int i = 0; i < KV_GROUP; ++i) kv_code_set(g, bits, i, codes[i]);
}

/* Unpacks a group into 32 codes. */
KV_INLINE void kv_unpack32(const uint8_t* g, int bits, uint8_t* codes) {
    for (int i = 0; i < KV_GROUP; ++i) codes[i] = (uint8_t)kv_code_get(g, bits, i);
}

KVRT_STATIC_ASSERT(KV_BLOCK_TOKENS == KV_GROUP, "a channel-major block is one group per channel");
KVRT_STATIC_ASSERT(sizeof(block_q8_0) == 34, "q8_0 block");
KVRT_STATIC_ASSERT(sizeof(block_q4_0) == 18, "q4_0 block");

#endif /* KVRT_KV_LAYOUT_H */
