// y = silu(g) * u, elementwise (cpp/cpu/swiglu.cpp).
#include <algorithm>

#include "common.cuh"

namespace kvrt {

namespace {

__device__ inline float swiglu_one(float g, float u) { return g / (1.0f + expf(-g)) * u; }

__global__ void swiglu_kernel(const float* g, const float* u, float* y, int64_t n) {
    pdl_begin();
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = swiglu_one(g[i], u[i]);
}

// With the q16 codes of y (rows of cols): a warp per 32-element block.
__global__ void swiglu_q16_kernel(const float* g, const float* u, float* y, int64_t cols,
                                  int64_t n_blocks, int16_t* qs, int2* ds) {
    pdl_begin();
    const int lane = threadIdx.x % 32;
    const int64_t nb = cols / 32;
    for (int64_t b = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; b < n_blocks;
         b += (int64_t)gridDim.x * blockDim.x / 32) {
        const int64_t i = b * 32 + lane;
        const float v = swiglu_one(g[i], u[i]);
        y[i] = v;
        q16_block(v, lane, b / nb, b % nb, cols, qs, ds);
    }
}

}  // namespace

void cuda_swiglu(const float* g, const float* u, float* y, int64_t n_rows, int64_t cols,
                 cudaStream_t s, void* act) {
    const int64_t n = n_rows * cols;
    if (n <= 0) return;
    const int blocks = (int)std::min<int64_t>((n + 255) / 256, 4096);
    if (act) {
        if (cols % 32) throw error("CUDA: q16 activations need a multiple of 32 columns");
        launch_pdl(swiglu_q16_kernel, blocks, 256, 0, s, g, u, y, cols, n / 32, q16_codes(act),
                   q16_scales(act, n_rows, cols));
    } else {
        launch_pdl(swiglu_kernel, blocks, 256, 0, s, g, u, y, n);
    }
    KVRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kvrt
