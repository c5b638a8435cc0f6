// y = x / rms(x) * w over rows: one block per row, the sum of squares in
// double as the CPU kernel (cpp/cpu/rms_norm.cpp) takes it.
#include "common.cuh"

namespace kvrt {

namespace {

constexpr int kThreads = 256;

__global__ void rms_norm_kernel(const float* x, const float* w, float* y, int64_t n, float eps) {
    const float* xr = x + (int64_t)blockIdx.x * n;
    float* yr = y + (int64_t)blockIdx.x * n;
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) ss += (double)xr[i] * xr[i];
    __shared__ double part[kThreads / 32];
    ss = warp_sum(ss);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
    __syncthreads();
    double tot = 0.0;
    for (int i = 0; i < kThreads / 32; ++i) tot += part[i];
    const float scale = (float)(1.0 / sqrt(tot / (double)n + (double)eps));
    // y may alias x: every read of the row happened before the barrier.
    for (int64_t i = threadIdx.x; i < n; i += kThreads) yr[i] = __fmul_rn(xr[i] * scale, w[i]);
}

}  // namespace

void cuda_rms_norm_rows(const float* x, const float* w, float* y, int64_t n_rows, int64_t n,
                        float eps, cudaStream_t s) {
    if (n_rows <= 0) return;
    rms_norm_kernel<<<(unsigned)n_rows, kThreads, 0, s>>>(x, w, y, n, eps);
    KVRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kvrt
