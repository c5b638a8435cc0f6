// y = silu(g) * u, elementwise (cpp/cpu/swiglu.cpp).
#include <algorithm>

#include "common.cuh"

namespace kvrt {

namespace {

__global__ void swiglu_kernel(const float* g, const float* u, float* y, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

}  // namespace

void cuda_swiglu(const float* g, const float* u, float* y, int64_t n, cudaStream_t s) {
    if (n <= 0) return;
    const int blocks = (int)std::min<int64_t>((n + 255) / 256, 4096);
    swiglu_kernel<<<blocks, 256, 0, s>>>(g, u, y, n);
    KVRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kvrt
