// Decode matvec sweep: the block kernel's variants (KS warps splitting a
// row's blocks, R rows per warp, U steps' loads in flight) over the 1B and 8B
// bench shapes' matrices at Q4_0 and Q8_0, one token of q16 activations, the
// weights cycled through a pool larger than L2; beside each, a plain 16-byte
// read of the same bytes. Prints microseconds and TB/s per matrix. The decode
// defaults in cuda/matmul.cu come from its table. A benchmark, not part of the
// build:
//
//   nvcc -std=c++17 -O3 -arch=sm_90 -Icpp -Icuda tools/cuda_matvec_sweep.cu -o /tmp/sweep && /tmp/sweep
#include "../cuda/matmul.cu"

#include <cstdio>
#include <type_traits>
#include <vector>

using namespace kvrt;

// A matrix's bytes at Q4_0 (18 per 32-element block) or Q8_0 (34), and the
// pool slot (4 KiB aligned) each launch reads a matrix from.
size_t weight_bytes(bool q4, int64_t rows, int64_t cols) { return (size_t)rows * cols / 32 * (q4 ? 18 : 34); }
size_t slot_bytes(size_t wbytes) { return (wbytes + 4095) / 4096 * 4096; }

template <int T, int KS, int R, int U>
float run(const uint8_t* pool, size_t pool_bytes, int64_t rows, int64_t cols, const int16_t* aq,
          const int2* ad, float* out, int iters) {
    const size_t slot = slot_bytes(weight_bytes(T == GGML_TYPE_Q4_0, rows, cols));
    const int n_slots = (int)std::max<size_t>(1, pool_bytes / slot);
    mv_set set{};
    set.count = 1;
    int64_t blocks = mv_row_blocks<KS, R>(rows);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    for (int w = 0; w < 2; ++w) {
        cudaEventRecord(e0);
        for (int it = 0; it < iters; ++it) {
            set.t[0] = mv_target{pool + (size_t)(it % n_slots) * slot, rows, out};
            matvec_blocks_kernel<T, true, 1, KS, R, U>
                <<<(unsigned)blocks, 32 * kMvWarps>>>(set, cols, aq, ad, nullptr, 1, 0, 0);
        }
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
    }
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (cudaGetLastError() != cudaSuccess) return -1;
    return ms * 1000.0f / iters;
}

__global__ void read_kernel(const uint4* p, size_t n, uint32_t* sink) {
    uint32_t x = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const uint4 v = __ldg(p + i);
        x ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (x == 0x12345678u) *sink = x;
}

int main() {
    const size_t pool_bytes = (size_t)1 << 30;
    uint8_t* pool;
    cudaMalloc(&pool, pool_bytes);
    cudaMemset(pool, 0x11, pool_bytes);
    const int64_t maxc = 14336;
    int16_t* aq;
    int2* ad;
    cudaMalloc(&aq, q16_stride(maxc) * 2);
    cudaMemset(aq, 1, q16_stride(maxc) * 2);
    cudaMalloc(&ad, maxc / 32 * 8);
    cudaMemset(ad, 0, maxc / 32 * 8);
    float* out;
    cudaMalloc(&out, 128256 * 4);
    uint32_t* sink;
    cudaMalloc(&sink, 4);
    struct M { const char* name; int64_t rows, cols; };
    const M ms[] = {{"8B qkv 6144x4096", 6144, 4096}, {"8B o 4096x4096", 4096, 4096},
                    {"8B gate/up 28672x4096", 28672, 4096}, {"8B down 4096x14336", 4096, 14336},
                    {"8B out 128256x4096", 128256, 4096},
                    {"1B qkv 3072x2048", 3072, 2048}, {"1B o 2048x2048", 2048, 2048},
                    {"1B gate/up 16384x2048", 16384, 2048}, {"1B down 2048x8192", 2048, 8192},
                    {"1B out 128256x2048", 128256, 2048}};
    for (int ty = 0; ty < 2; ++ty) {
        printf("\n%s\n| matrix | MB | read kernel | variant KS,R,U -> us (TB/s) |\n|---|---:|---:|---|\n", ty == 0 ? "Q4_0" : "Q8_0");
        for (const M& m : ms) {
            const size_t wb = weight_bytes(ty == 0, m.rows, m.cols);
            const size_t slot = slot_bytes(wb);
            const int n_slots = (int)(pool_bytes / slot);
            cudaEvent_t e0, e1;
            cudaEventCreate(&e0);
            cudaEventCreate(&e1);
            cudaEventRecord(e0);
            for (int it = 0; it < 200; ++it)
                read_kernel<<<132 * 16, 256>>>(reinterpret_cast<const uint4*>(pool + (it % n_slots) * slot), wb / 16, sink);
            cudaEventRecord(e1);
            cudaEventSynchronize(e1);
            float rms = 0;
            cudaEventElapsedTime(&rms, e0, e1);
            const double rus = rms * 1000.0 / 200;
            printf("| %s | %.1f | %.1f us (%.2f) |", m.name, wb / 1e6, rus, wb / rus / 1e6);
            const auto variant = [&](auto ks, auto r, auto u) {
                constexpr int KS = decltype(ks)::value, R = decltype(r)::value, U = decltype(u)::value;
                const float us = ty == 0 ? run<GGML_TYPE_Q4_0, KS, R, U>(pool, pool_bytes, m.rows, m.cols, aq, ad, out, 200)
                                         : run<GGML_TYPE_Q8_0, KS, R, U>(pool, pool_bytes, m.rows, m.cols, aq, ad, out, 200);
                printf(" %d,%d,%d: %.1f (%.2f)", KS, R, U, us, wb / us / 1e6);
            };
            using C1 = std::integral_constant<int, 1>;
            using C2 = std::integral_constant<int, 2>;
            using C4 = std::integral_constant<int, 4>;
            variant(C1{}, C2{}, C1{});
            variant(C4{}, C2{}, C1{});
            variant(C1{}, C4{}, C1{});
            variant(C1{}, C4{}, C2{});
            variant(C4{}, C4{}, C1{});
            variant(C4{}, C4{}, C2{});
            variant(C1{}, C4{}, C4{});
            variant(C1{}, C2{}, C2{});
            printf(" |\n");
        }
    }
    return 0;
}
