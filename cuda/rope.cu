// Rotary embedding in place, as rope_table::apply (cpp/cpu/rope.cpp): the
// angle pos * inv_freq[i] and its cosine and sine in double, then rounded to
// float, so positions deep in a long context keep their precision.
#include <algorithm>

#include "common.cuh"

namespace kvrt {

namespace {

// Index idx over x's pairs, then x2's.
__global__ void rope_kernel(float* x, int n_heads, float* x2, int n_heads2, int head_dim,
                            int n_rot, int neox, const float* inv_freq, int pos0,
                            const int* pos_dev, int64_t total1, int64_t total) {
    const int half = n_rot / 2;
    if (pos_dev) pos0 += *pos_dev;
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        const bool second = idx >= total1;
        const int64_t j = second ? idx - total1 : idx;
        const int i = (int)(j % half);
        const int64_t th = j / half;  // token * heads + head
        const int t = (int)(th / (second ? n_heads2 : n_heads));
        float* xh = (second ? x2 : x) + th * head_dim;
        const double theta = (double)(pos0 + t) * (double)inv_freq[i];
        const float cs = (float)cos(theta), sn = (float)sin(theta);
        float* a = xh + (neox ? i : 2 * i);
        float* b = a + (neox ? half : 1);
        const float x0 = *a, x1 = *b;
        *a = __fsub_rn(__fmul_rn(x0, cs), __fmul_rn(x1, sn));
        *b = __fadd_rn(__fmul_rn(x0, sn), __fmul_rn(x1, cs));
    }
}

}  // namespace

void cuda_rope_apply(float* x, int n_tok, int n_heads, const cuda_rope& r, int pos0,
                     cudaStream_t s, const int* pos_dev, float* x2, int n_heads2) {
    const int64_t total1 = (int64_t)n_tok * n_heads * (r.n_rot / 2);
    const int64_t total = total1 + (x2 ? (int64_t)n_tok * n_heads2 * (r.n_rot / 2) : 0);
    if (total <= 0) return;
    const int blocks = (int)std::min<int64_t>((total + 255) / 256, 4096);
    rope_kernel<<<blocks, 256, 0, s>>>(x, n_heads, x2, n_heads2, r.head_dim, r.n_rot, r.neox,
                                       r.inv_freq, pos0, pos_dev, total1, total);
    KVRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kvrt
