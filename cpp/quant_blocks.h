/* Quantized block layouts of GGUF tensor types, byte-identical to ggml's.
 * Plain C so .cpp, .cu and .metal sources share one definition.
 *
 *   q4_0: x = d * (q - 8),        q 4-bit; elements j and j+16 share byte j
 *   q4_1: x = d * q + m
 *   q5_0: x = d * (q - 16),       5th bits in qh (bit j: element j)
 *   q5_1: x = d * q + m
 *   q8_0: x = d * q,              q int8
 *   q8_1: q8_0 plus s = d * sum(q), the activation type for q4_1/q5_1
 *   q4_K, q5_K: 8 sub-blocks of 32 with 6-bit scales and mins packed in scales[12]
 *   q6_K: 16 sub-blocks of 16 with int8 scales
 *   q8_K: float d, int8 q, sums of 16-element groups; activations for K-quants
 *   q16:  kvrt's activation format for the 32-element weight types: x = d*q,
 *         q int16 (|q| <= 32767), float d, float s = d * sum(q) for the
 *         minimum term of q4_1 / q5_1. 8-bit activation codes (llama.cpp's
 *         q8_0 / q8_1) move SmolLM2's next-token KL against a float
 *         reference by ~3e-3; 16-bit codes make it ~1e-5 for one widening
 *         per weight block.
 * d, m, s, dmin are IEEE half unless noted. */
#ifndef KVRT_QUANT_BLOCKS_H
#define KVRT_QUANT_BLOCKS_H

#include <stdint.h>

#include "ggml_types.h"

#ifdef __cplusplus
#define KVRT_STATIC_ASSERT(c, m) static_assert(c, m)
#else
#define KVRT_STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif

typedef uint16_t kvrt_half;

typedef struct { kvrt_half d; uint8_t qs[QK4_0 / 2]; } block_q4_0;
typedef struct { kvrt_half d, m; uint8_t qs[QK4_1 / 2]; } block_q4_1;
typedef struct { kvrt_half d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; } block_q5_0;
typedef struct { kvrt_half d, m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; } block_q5_1;
typedef struct { kvrt_half d; int8_t qs[QK8_0]; } block_q8_0;
typedef struct { kvrt_half d, s; int8_t qs[QK8_1]; } block_q8_1;
typedef struct { float d, s; int16_t qs[32]; } block_q16;

#define K_SCALE_SIZE 12
typedef struct { kvrt_half d, dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; } block_q4_K;
typedef struct {
    kvrt_half d, dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K;
typedef struct {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    kvrt_half d;
} block_q6_K;
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K;

KVRT_STATIC_ASSERT(sizeof(block_q4_0) == 18, "q4_0 block size");
KVRT_STATIC_ASSERT(sizeof(block_q4_1) == 20, "q4_1 block size");
KVRT_STATIC_ASSERT(sizeof(block_q5_0) == 22, "q5_0 block size");
KVRT_STATIC_ASSERT(sizeof(block_q5_1) == 24, "q5_1 block size");
KVRT_STATIC_ASSERT(sizeof(block_q8_0) == 34, "q8_0 block size");
KVRT_STATIC_ASSERT(sizeof(block_q8_1) == 36, "q8_1 block size");
KVRT_STATIC_ASSERT(sizeof(block_q16) == 72, "q16 block size");
KVRT_STATIC_ASSERT(sizeof(block_q4_K) == 144, "q4_K block size");
KVRT_STATIC_ASSERT(sizeof(block_q5_K) == 176, "q5_K block size");
KVRT_STATIC_ASSERT(sizeof(block_q6_K) == 210, "q6_K block size");
KVRT_STATIC_ASSERT(sizeof(block_q8_K) == 292, "q8_K block size");

#endif
