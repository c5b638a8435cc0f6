/* Tensor element types of GGUF files (ggml's numbering) and their block
 * geometry. Plain C so .cpp, .cu and .metal sources can all include it.
 * The block structs themselves live in quant_blocks.h. */
#ifndef KVRT_GGML_TYPES_H
#define KVRT_GGML_TYPES_H

#include <stddef.h>
#include <stdint.h>

enum ggml_type {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q5_0 = 6,
    GGML_TYPE_Q5_1 = 7,
    GGML_TYPE_Q8_0 = 8,
    GGML_TYPE_Q8_1 = 9,
    GGML_TYPE_Q2_K = 10,
    GGML_TYPE_Q3_K = 11,
    GGML_TYPE_Q4_K = 12,
    GGML_TYPE_Q5_K = 13,
    GGML_TYPE_Q6_K = 14,
    GGML_TYPE_Q8_K = 15,
    GGML_TYPE_BF16 = 30,
    GGML_TYPE_COUNT = 40,
    /* kvrt's activation format (never in files): 32 int16 codes, float scale
     * and scaled code sum; see quant_blocks.h. */
    KVRT_TYPE_Q16 = 64,
};

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK_K 256

struct ggml_type_size {
    int supported;     /* 1 if kvrt reads tensors of this type */
    int block_size;    /* elements per block */
    size_t type_size;  /* bytes per block */
    const char* name;
};

/* Geometry of a type id as read from a file; .supported == 0 for ids kvrt
 * does not handle (including ids it does not know at all). */
static inline struct ggml_type_size ggml_type_geometry(uint32_t t) {
    struct ggml_type_size r = {0, 0, 0, "unknown"};
    switch (t) {
        case GGML_TYPE_F32: r = (struct ggml_type_size){1, 1, 4, "F32"}; break;
        case GGML_TYPE_F16: r = (struct ggml_type_size){1, 1, 2, "F16"}; break;
        case GGML_TYPE_BF16: r = (struct ggml_type_size){1, 1, 2, "BF16"}; break;
        case GGML_TYPE_Q4_0: r = (struct ggml_type_size){1, 32, 18, "Q4_0"}; break;
        case GGML_TYPE_Q4_1: r = (struct ggml_type_size){1, 32, 20, "Q4_1"}; break;
        case GGML_TYPE_Q5_0: r = (struct ggml_type_size){1, 32, 22, "Q5_0"}; break;
        case GGML_TYPE_Q5_1: r = (struct ggml_type_size){1, 32, 24, "Q5_1"}; break;
        case GGML_TYPE_Q8_0: r = (struct ggml_type_size){1, 32, 34, "Q8_0"}; break;
        case GGML_TYPE_Q8_1: r = (struct ggml_type_size){0, 32, 36, "Q8_1"}; break;
        case GGML_TYPE_Q2_K: r = (struct ggml_type_size){0, 256, 84, "Q2_K"}; break;
        case GGML_TYPE_Q3_K: r = (struct ggml_type_size){0, 256, 110, "Q3_K"}; break;
        case GGML_TYPE_Q4_K: r = (struct ggml_type_size){1, 256, 144, "Q4_K"}; break;
        case GGML_TYPE_Q5_K: r = (struct ggml_type_size){1, 256, 176, "Q5_K"}; break;
        case GGML_TYPE_Q6_K: r = (struct ggml_type_size){1, 256, 210, "Q6_K"}; break;
        case GGML_TYPE_Q8_K: r = (struct ggml_type_size){0, 256, 292, "Q8_K"}; break;
        case KVRT_TYPE_Q16: r = (struct ggml_type_size){0, 32, 72, "Q16"}; break;
        default: break;
    }
    return r;
}

#endif
