// Single-thread throughput of the quantized kernels at SmolLM2-135M's shapes:
//   matvec  (decode): one activation row against every weight row, by
//           quants_vec_dot per row; GB/s counts weight bytes streamed;
//   gemm    (prefill): 512 activation rows through quants_gemm_tile with the
//           matmul's blocking (64 weight rows x 16 columns per call).
// Usage: bench_quants [--all]   (--all adds the other weight types)
// Weights of 1536x576 are 0.5-1 MB: the matvec numbers are L2/L3 resident,
// token_embd (49152x576 Q8_0, 27 MB) is the one that streams from memory.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "quants.h"

using namespace kvrt;

namespace {

using clk = std::chrono::steady_clock;

// Runs f until at least `min_s` seconds have passed; returns seconds per call.
template <class F>
double time_per_call(F&& f, double min_s = 0.3) {
    f();  // warm caches
    int reps = 0;
    const auto t0 = clk::now();
    double s = 0.0;
    do {
        f();
        ++reps;
        s = std::chrono::duration<double>(clk::now() - t0).count();
    } while (s < min_s);
    return s / reps;
}

struct shape {
    ggml_type t;
    int rows, cols;
    const char* what;
};

void bench(const shape& sh, std::mt19937& rng) {
    const ggml_type t = sh.t, vt = quants_vec_dot_type(t);
    const int rows = sh.rows, cols = sh.cols, tokens = 512;
    const size_t rb = quants_row_size(t, cols), ab = quants_row_size(vt, cols);
    std::normal_distribution<float> nd;
    std::vector<uint8_t> w(rb * rows), a(ab * tokens);
    std::vector<float> row(cols);
    quants_set_impl(QUANTS_IMPL_SIMD);
    for (int r = 0; r < rows; ++r) {
        for (auto& v : row) v = nd(rng);
        try {
            quants_quantize_row(t, row.data(), &w[r * rb], cols);
        } catch (...) {  // K-quants: random codes, finite scales
            for (size_t i = 0; i < rb; ++i) w[r * rb + i] = (uint8_t)rng();
            for (size_t b = 0; b < rb; b += ggml_type_geometry(t).type_size) {
                const uint16_t d = fp32_to_fp16(0.01f);
                std::memcpy(&w[r * rb + b + (t == GGML_TYPE_Q6_K ? 208 : 0)], &d, 2);
            }
        }
    }
    for (int c = 0; c < tokens; ++c) {
        for (auto& v : row) v = nd(rng);
        quants_quantize_row(vt, row.data(), &a[c * ab], cols);
    }
    std::vector<float> out((size_t)rows * tokens);

    for (quants_impl impl : {QUANTS_IMPL_SCALAR, QUANTS_IMPL_SIMD}) {
        quants_set_impl(impl);
        const char* iname = impl == QUANTS_IMPL_SIMD ? quants_simd_name() : "scalar";
        const double mv = time_per_call([&] {
            for (int r = 0; r < rows; ++r) out[r] = quants_vec_dot(t, cols, &w[r * rb], a.data());
        });
        std::printf("| %-5s | %-6s | %-22s | matvec    | %8.2f | %8.2f |\n", ggml_type_geometry(t).name,
                    iname, sh.what, rb * (double)rows / mv / 1e9, 2.0 * rows * cols / mv / 1e9);
        // The scalar path is ~20x slower: fewer tokens keep the run short.
        const int ntok = impl == QUANTS_IMPL_SIMD ? tokens : 32;
        const double mm = time_per_call([&] {
            for (int r = 0; r < rows; r += 64)
                for (int c = 0; c < ntok; c += 16)
                    quants_gemm_tile(t, cols, &w[r * rb], rb, &a[c * ab], ab, &out[(size_t)c * rows + r],
                                     rows, rows - r < 64 ? rows - r : 64, 16);
        });
        std::printf("| %-5s | %-6s | %-22s | gemm x%-3d | %8.2f | %8.2f |\n", ggml_type_geometry(t).name,
                    iname, sh.what, ntok, rb * (double)rows / mm / 1e9,
                    2.0 * rows * cols * ntok / mm / 1e9);
    }
}

}  // namespace

int main(int argc, char** argv) {
    const bool all = argc > 1 && std::strcmp(argv[1], "--all") == 0;
    std::mt19937 rng(1);
    std::printf("single thread, simd=%s\n\n", quants_simd_name());
    std::printf("| type  | impl   | weight (rows x cols)   | op        | GB/s w   | GFLOP/s  |\n");
    std::printf("| ----- | ------ | ---------------------- | --------- | -------: | -------: |\n");
    std::vector<shape> shapes = {
        {GGML_TYPE_Q4_1, 1536, 576, "ffn_up 1536x576"},
        {GGML_TYPE_Q4_1, 576, 1536, "ffn_down 576x1536"},
        {GGML_TYPE_Q8_0, 49152, 576, "token_embd 49152x576"},
    };
    if (all)
        for (ggml_type t : {GGML_TYPE_Q4_0, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q8_0,
                            GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K, GGML_TYPE_F16})
            shapes.push_back({t, 1536, 576, "1536x576"});
    for (const shape& sh : shapes) bench(sh, rng);
    return 0;
}
