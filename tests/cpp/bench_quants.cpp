// Single-thread throughput of the quantized matvec / matmul tiles at the
// real model's shapes: prints GB/s of weights streamed and GFLOP/s.
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "quants.h"

using namespace kvrt;

static double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

int main() {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    const ggml_type types[] = {GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1,
                               GGML_TYPE_Q8_0, GGML_TYPE_Q4_K, GGML_TYPE_Q6_K, GGML_TYPE_F16};
    std::printf("| type | impl | rows x cols | cols (tokens) | GB/s weights | GFLOP/s |\n");
    std::printf("| ---- | ---- | ----------- | ------------: | -----------: | ------: |\n");
    for (ggml_type t : types) {
        const int rows = 1536, cols = 576;
        const ggml_type vt = quants_vec_dot_type(t);
        std::vector<float> w((size_t)rows * cols), x((size_t)64 * cols);
        for (auto& v : w) v = nd(rng);
        for (auto& v : x) v = nd(rng);
        const size_t rb = quants_row_size(t, cols), xb = quants_row_size(vt, cols);
        std::vector<uint8_t> wq(rb * rows), xq(xb * 64);
        // Weights of types without a quantizer here are random bytes with a
        // finite scale; speed does not depend on the values.
        bool can_quant = true;
        try {
            for (int r = 0; r < rows; ++r) quants_quantize_row(t, &w[(size_t)r * cols], &wq[r * rb], cols);
        } catch (...) {
            can_quant = false;
        }
        if (!can_quant)
            for (auto& b : wq) b = (uint8_t)(rng() & 0x3F);
        for (int c = 0; c < 64; ++c) quants_quantize_row(vt, &x[(size_t)c * cols], &xq[c * xb], cols);
        std::vector<float> out((size_t)rows * 64);
        for (quants_impl impl : {QUANTS_IMPL_SCALAR, QUANTS_IMPL_SIMD}) {
            quants_set_impl(impl);
            for (int nc : {1, 64}) {
                const int reps = nc == 1 ? 200 : 5;
                auto t0 = std::chrono::steady_clock::now();
                for (int i = 0; i < reps; ++i)
                    for (int r = 0; r < rows; r += 64)
                        for (int c = 0; c < nc; c += 16)
                            quants_gemm_tile(t, cols, &wq[r * rb], rb, &xq[c * xb], xb,
                                             &out[(size_t)c * rows + r], rows, 64,
                                             nc - c < 16 ? nc - c : 16);
                const double s = seconds_since(t0);
                std::printf("| %s | %s | %dx%d | %d | %.2f | %.2f |\n", ggml_type_geometry(t).name,
                            impl == QUANTS_IMPL_SIMD ? quants_simd_name() : "scalar", rows, cols, nc,
                            rb * rows * (double)reps / s / 1e9,
                            2.0 * rows * cols * nc * (double)reps / s / 1e9);
            }
        }
    }
    return 0;
}
