// y = x / rms(x) * w over rows: a block per row (a decode step's few rows:
// a block per part of one), the sum of squares in double as the CPU kernel
// (cpp/cpu/rms_norm.cpp) takes it.
#include "common.cuh"

namespace kvrt {

namespace {

constexpr int kMaxThreads = 1024;
constexpr int kPart = 256;          // elements (and threads) of a part of a row split over blocks
constexpr int kPartRowsBelow = 16;  // fewer rows than this are split into parts

// Threads for rows of n: one float4 each up to kMaxThreads, at least a warp,
// so a decode step's single row is read in one round of loads rather than
// one load after another.
int rms_threads(int64_t n) {
    const int64_t want = (n / 4 + 31) / 32 * 32;
    return (int)std::max<int64_t>(32, std::min<int64_t>(kMaxThreads, want));
}

// Block (row blockIdx.x, part blockIdx.y) takes the whole row's sum of
// squares (every part of a row sums it in the same order, so they agree
// bit for bit) and writes elements [c0, c0 + chunk) of y. A decode step's
// single row thus spreads over several multiprocessors instead of one.
// With qs/ds (n and chunk multiples of 32), y's q16 codes too: the part's
// x and weights are staged in shared memory (xs, 2 chunk floats) while the
// sum is taken, so the pass of a warp per 32-element block that follows
// waits on no global load. vec: n a multiple of 4 and x, w, y 16-byte
// aligned, so the row is read as float4. y may alias x only with one part.
__global__ void __launch_bounds__(kMaxThreads)
    rms_norm_kernel(const float* x, const float* w, float* y, int64_t n, int64_t chunk, float eps,
                    int16_t* qs, int2* ds, bool vec) {
    pdl_begin();
    extern __shared__ float xs[];
    __shared__ double part[kMaxThreads / 32];
    __shared__ float scale_s;
    const float* xr = x + (int64_t)blockIdx.x * n;
    float* yr = y + (int64_t)blockIdx.x * n;
    const int64_t c0 = (int64_t)blockIdx.y * chunk, c1 = min(n, c0 + chunk);
    const int nt = blockDim.x;
    double ss = 0.0;
    if (vec) {
        for (int64_t i = threadIdx.x; i < n / 4; i += nt) {
            const float4 v = reinterpret_cast<const float4*>(xr)[i];
            if (qs && 4 * i >= c0 && 4 * i < c1) {
                reinterpret_cast<float4*>(xs)[i - c0 / 4] = v;
                reinterpret_cast<float4*>(xs + chunk)[i - c0 / 4] = reinterpret_cast<const float4*>(w)[i];
            }
            ss += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
        }
    } else {
        for (int64_t i = threadIdx.x; i < n; i += nt) {
            const float v = xr[i];
            if (qs && i >= c0 && i < c1) {
                xs[i - c0] = v;
                xs[chunk + i - c0] = w[i];
            }
            ss += (double)v * v;
        }
    }
    ss = warp_sum(ss);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        double tot = threadIdx.x < nt / 32 ? part[threadIdx.x] : 0.0;
        tot = warp_sum(tot);
        if (threadIdx.x == 0) scale_s = (float)(1.0 / sqrt(tot / (double)n + (double)eps));
    }
    __syncthreads();
    const float scale = scale_s;
    // y may alias x (one part): every read of the row happened before the barrier.
    if (!qs) {
        if (vec) {
            for (int64_t i = c0 / 4 + threadIdx.x; i < c1 / 4; i += nt) {
                const float4 v = reinterpret_cast<const float4*>(xr)[i];
                const float4 g = reinterpret_cast<const float4*>(w)[i];
                reinterpret_cast<float4*>(yr)[i] =
                    make_float4(__fmul_rn(v.x * scale, g.x), __fmul_rn(v.y * scale, g.y),
                                __fmul_rn(v.z * scale, g.z), __fmul_rn(v.w * scale, g.w));
            }
        } else {
            for (int64_t i = c0 + threadIdx.x; i < c1; i += nt) yr[i] = __fmul_rn(xr[i] * scale, w[i]);
        }
        return;
    }
    // A warp's 32 consecutive elements are one block of codes (n, chunk and
    // the thread count multiples of 32, so the loop is the same for all its
    // lanes).
    for (int64_t i = c0 + threadIdx.x; i < c1; i += nt) {
        const float v = __fmul_rn(xs[i - c0] * scale, xs[chunk + i - c0]);
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
    // Few rows (decode) of more than a part, not in place: parts of kPart
    // elements, each its own block.
    const bool parts = n_rows < kPartRowsBelow && n > kPart && x != y;
    const int64_t chunk = parts ? kPart : n;
    const unsigned n_parts = (unsigned)((n + chunk - 1) / chunk);
    // Rows too long to stage (over 6144 floats in one part) take the codes in a pass of their own.
    const size_t smem = 2 * (size_t)chunk * sizeof(float);
    const bool fused = act && smem <= 48 * 1024;
    const bool vec = n % 4 == 0 && aligned16(x) && aligned16(w) && aligned16(y);
    launch_pdl(rms_norm_kernel, dim3((unsigned)n_rows, n_parts), parts ? kPart : rms_threads(n),
               fused ? smem : 0, s, x, w, y, n, chunk, eps, fused ? q16_codes(act) : nullptr,
               fused ? q16_scales(act, n_rows, n) : nullptr, vec);
    if (act && !fused) cuda_quantize_q16(y, (int)n_rows, n, act, s);
    KVRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kvrt
