// y = x / rms(x) * w over rows: one block per row, the sum of squares in
// double as the CPU kernel (cpp/cpu/rms_norm.cpp) takes it.
#include "common.cuh"

namespace kvrt {

namespace {

constexpr int kMaxThreads = 1024;

// Threads for rows of n: one float4 each up to kMaxThreads, at least a warp,
// so a decode step's single row is read in one round of loads rather than
// one load after another.
int rms_threads(int64_t n) {
    const int64_t want = (n / 4 + 31) / 32 * 32;
    return (int)std::max<int64_t>(32, std::min<int64_t>(kMaxThreads, want));
}

// With qs/ds (n a multiple of 32), y's q16 codes too: the row and the
// weights are staged in shared memory (xs, 2n floats) while the sum of
// squares is taken, so the pass of a warp per 32-element block that follows
// waits on no global load. vec: n a multiple of 4 and x, w, y 16-byte
// aligned, so the row is read as float4.
__global__ void __launch_bounds__(kMaxThreads)
    rms_norm_kernel(const float* x, const float* w, float* y, int64_t n, float eps, int16_t* qs,
                    int2* ds, bool vec) {
    extern __shared__ float xs[];
    const float* xr = x + (int64_t)blockIdx.x * n;
    float* yr = y + (int64_t)blockIdx.x * n;
    const int nt = blockDim.x;
    double ss = 0.0;
    if (vec) {
        for (int64_t i = threadIdx.x; i < n / 4; i += nt) {
            const float4 v = reinterpret_cast<const float4*>(xr)[i];
            if (qs) {
                reinterpret_cast<float4*>(xs)[i] = v;
                reinterpret_cast<float4*>(xs + n)[i] = reinterpret_cast<const float4*>(w)[i];
            }
            ss += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
        }
    } else {
        for (int64_t i = threadIdx.x; i < n; i += nt) {
            const float v = xr[i];
            if (qs) {
                xs[i] = v;
                xs[n + i] = w[i];
            }
            ss += (double)v * v;
        }
    }
    __shared__ double part[kMaxThreads / 32];
    ss = warp_sum(ss);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
    __syncthreads();
    double tot = 0.0;
    for (int i = 0; i < nt / 32; ++i) tot += part[i];
    const float scale = (float)(1.0 / sqrt(tot / (double)n + (double)eps));
    // y may alias x: every read of the row happened before the barrier.
    if (!qs) {
        if (vec) {
            for (int64_t i = threadIdx.x; i < n / 4; i += nt) {
                const float4 v = reinterpret_cast<const float4*>(xr)[i];
                const float4 g = reinterpret_cast<const float4*>(w)[i];
                reinterpret_cast<float4*>(yr)[i] =
                    make_float4(__fmul_rn(v.x * scale, g.x), __fmul_rn(v.y * scale, g.y),
                                __fmul_rn(v.z * scale, g.z), __fmul_rn(v.w * scale, g.w));
            }
        } else {
            for (int64_t i = threadIdx.x; i < n; i += nt) yr[i] = __fmul_rn(xr[i] * scale, w[i]);
        }
        return;
    }
    // A warp's 32 consecutive elements are one block of codes (n and the
    // thread count multiples of 32, so the loop is the same for all its lanes).
    for (int64_t i = threadIdx.x; i < n; i += nt) {
        const float v = __fmul_rn(xs[i] * scale, xs[n + i]);
        yr[i] = v;
        q16_block(v, threadIdx.x % 32, blockIdx.x, i / 32, n, qs, ds);
    }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void cuda_rms_norm_rows(const float* x, const float* w, float* y, int64_t n_rows, int64_t n,
                        float eps, cudaStream_t s, void* act) {
    if (n_rows <= 0) return;
    if (act && n % 32) throw error("CUDA: q16 activations need a multiple of 32 columns");
    // Rows too long to stage (over 6144 floats) take the codes in a pass of their own.
    const size_t smem = 2 * (size_t)n * sizeof(float);
    const bool fused = act && smem <= 48 * 1024;
    const bool vec = n % 4 == 0 && aligned16(x) && aligned16(w) && aligned16(y);
    rms_norm_kernel<<<(unsigned)n_rows, rms_threads(n), fused ? smem : 0, s>>>(
            x, w, y, n, eps, fused ? q16_codes(act) : nullptr,
            fused ? q16_scales(act, n_rows, n) : nullptr, vec);
    if (act && !fused) cuda_quantize_q16(y, (int)n_rows, n, act, s);
    KVRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kvrt
