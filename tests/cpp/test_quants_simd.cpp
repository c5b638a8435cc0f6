// SIMD quants kernels (AVX2 or NEON) against the scalar reference, on random
// data with awkward shapes. Prints one PASS/FAIL line per case; exit status 1
// if any case fails. `--quick` uses fewer sizes (for runs under qemu).
//
// Tolerances: activation quantizers must match byte for byte. Dot products
// sum exact integer block dots on both paths and differ only in the order of
// the float accumulation, so |simd - scalar| <= 1e-6 * sum |x_i * y_i|.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "quants.h"

using namespace kvrt;

namespace {

int g_failed = 0;

void report(bool ok, const std::string& what) {
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
    if (!ok) ++g_failed;
}

std::vector<float> random_floats(std::mt19937& rng, int64_t n) {
    std::normal_distribution<float> nd;
    std::vector<float> x(n);
    for (auto& v : x) v = nd(rng);
    // Awkward values: a zero block, an outlier, ties at +/- max, .5 steps.
    if (n >= 256) {
        std::fill(x.begin(), x.begin() + 32, 0.0f);
        x[40] = 50.0f;
        x[64] = -3.0f, x[65] = 3.0f;
        for (int i = 96; i < 128; ++i) x[i] = (float)((int)(rng() % 255) - 127) / 2.0f;
    }
    return x;
}

bool has_ref_quantizer(ggml_type t) {
    return t == GGML_TYPE_F32 || t == GGML_TYPE_F16 || t == GGML_TYPE_BF16 || t == GGML_TYPE_Q4_0 ||
           t == GGML_TYPE_Q4_1 || t == GGML_TYPE_Q5_0 || t == GGML_TYPE_Q5_1 || t == GGML_TYPE_Q8_0;
}

// Rows of weights: quantized from random floats, or (K-quants, which have no
// quantizer here) random bytes with finite f16 super-scales.
std::vector<uint8_t> random_weights(std::mt19937& rng, ggml_type t, int rows, int64_t n) {
    const size_t rb = quants_row_size(t, n);
    std::vector<uint8_t> w(rb * rows);
    quants_set_impl(QUANTS_IMPL_SCALAR);
    if (has_ref_quantizer(t)) {
        for (int r = 0; r < rows; ++r) {
            const std::vector<float> x = random_floats(rng, n);
            quants_quantize_row(t, x.data(), &w[r * rb], n);
        }
        return w;
    }
    for (auto& b : w) b = (uint8_t)rng();
    const size_t bs = ggml_type_geometry(t).type_size;
    std::normal_distribution<float> nd;
    for (size_t off = 0; off < w.size(); off += bs) {
        const uint16_t d = fp32_to_fp16(0.01f * nd(rng)), dmin = fp32_to_fp16(0.01f * std::fabs(nd(rng)));
        if (t == GGML_TYPE_Q6_K) {
            std::memcpy(&w[off + bs - 2], &d, 2);
        } else {
            std::memcpy(&w[off], &d, 2);
            std::memcpy(&w[off + 2], &dmin, 2);
        }
    }
    return w;
}

std::vector<uint8_t> quantize_rows(ggml_type t, const std::vector<float>& x, int rows, int64_t n) {
    const size_t rb = quants_row_size(t, n);
    std::vector<uint8_t> q(rb * rows);
    for (int r = 0; r < rows; ++r) quants_quantize_row(t, &x[(size_t)r * n], &q[r * rb], n);
    return q;
}

// sum |x_i * y_i| via the dequantized rows: the scale of float rounding.
double abs_dot(ggml_type t, const uint8_t* x, const uint8_t* y, int64_t n) {
    std::vector<float> a(n), b(n);
    quants_dequantize_row(t, x, a.data(), n);
    quants_dequantize_row(quants_vec_dot_type(t), y, b.data(), n);
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += std::fabs((double)a[i] * b[i]);
    return s;
}

void test_quantizer(std::mt19937& rng, ggml_type t, int64_t n) {
    const int rows = 3;
    const std::vector<float> x = random_floats(rng, n * rows);
    quants_set_impl(QUANTS_IMPL_SCALAR);
    const std::vector<uint8_t> ref = quantize_rows(t, x, rows, n);
    quants_set_impl(QUANTS_IMPL_SIMD);
    const std::vector<uint8_t> got = quantize_rows(t, x, rows, n);
    report(ref == got, std::string("quantize ") + ggml_type_geometry(t).name + " n=" + std::to_string(n));
}

void test_dots(std::mt19937& rng, ggml_type t, int64_t n) {
    const ggml_type vt = quants_vec_dot_type(t);
    const int rows = 7, cols = 7;
    const std::vector<uint8_t> w = random_weights(rng, t, rows, n);
    quants_set_impl(QUANTS_IMPL_SCALAR);
    const std::vector<uint8_t> a = quantize_rows(vt, random_floats(rng, n * cols), cols, n);
    const size_t rb = quants_row_size(t, n), ab = quants_row_size(vt, n);
    const char* name = ggml_type_geometry(t).name;

    std::vector<float> ref(rows * cols), tol(rows * cols);
    for (int c = 0; c < cols; ++c)
        for (int r = 0; r < rows; ++r) {
            ref[c * rows + r] = quants_vec_dot(t, n, &w[r * rb], &a[c * ab]);
            tol[c * rows + r] = (float)(1e-6 * abs_dot(t, &w[r * rb], &a[c * ab], n) + 1e-30);
        }

    quants_set_impl(QUANTS_IMPL_SIMD);
    double worst = 0.0;
    for (int c = 0; c < cols; ++c)
        for (int r = 0; r < rows; ++r) {
            const float got = quants_vec_dot(t, n, &w[r * rb], &a[c * ab]);
            worst = std::max(worst, (double)std::fabs(got - ref[c * rows + r]) / tol[c * rows + r]);
        }
    char buf[160];
    std::snprintf(buf, sizeof buf, "vec_dot %s n=%lld (worst err / tol = %.3f)", name, (long long)n, worst);
    report(worst <= 1.0, buf);

    // Tiles of every shape up to 7x7, scattered into a larger output.
    bool ok = true;
    for (int nr : {1, 2, 3, 4, 5, 7})
        for (int nc : {1, 2, 3, 4, 5, 7}) {
            const size_t ldo = rows + 3;
            std::vector<float> out(ldo * cols, NAN);
            quants_gemm_tile(t, n, w.data(), rb, a.data(), ab, out.data(), ldo, nr, nc);
            for (int c = 0; c < cols; ++c)
                for (size_t r = 0; r < ldo; ++r) {
                    const float v = out[c * ldo + r];
                    if ((int)r < nr && c < nc) {
                        if (!(std::fabs(v - ref[c * rows + r]) <= tol[c * rows + r])) ok = false;
                    } else if (!std::isnan(v)) {
                        ok = false;  // wrote outside the tile
                    }
                }
        }
    report(ok, std::string("gemm_tile ") + name + " n=" + std::to_string(n) + " nr,nc in {1,2,3,4,5,7}");
}

}  // namespace

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    std::printf("simd=%s\n", quants_simd_name());
    std::mt19937 rng(12345);

    const std::vector<int64_t> n32 = quick ? std::vector<int64_t>{32, 576, 1536}
                                           : std::vector<int64_t>{32, 64, 96, 576, 1536, 32 * 257};
    const std::vector<int64_t> n256 = quick ? std::vector<int64_t>{256, 1536}
                                            : std::vector<int64_t>{256, 512, 1536, 256 * 23};

    for (int64_t n : n32) {
        test_quantizer(rng, GGML_TYPE_Q8_0, n);
        test_quantizer(rng, GGML_TYPE_Q8_1, n);
        test_quantizer(rng, KVRT_TYPE_Q16, n);
    }
    for (int64_t n : n256) test_quantizer(rng, GGML_TYPE_Q8_K, n);

    const ggml_type small[] = {GGML_TYPE_F32,  GGML_TYPE_F16,  GGML_TYPE_BF16, GGML_TYPE_Q4_0,
                               GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q8_0};
    for (ggml_type t : small)
        for (int64_t n : n32) test_dots(rng, t, n);
    for (ggml_type t : {GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K})
        for (int64_t n : n256) test_dots(rng, t, n);
    // Odd float lengths exercise the SIMD tails of the f32/f16 dots.
    for (int64_t n : {1, 7, 33, 1001}) {
        test_dots(rng, GGML_TYPE_F32, n);
        test_dots(rng, GGML_TYPE_F16, n);
    }

    std::printf("%s: %d failed\n", g_failed ? "FAIL" : "PASS", g_failed);
    return g_failed ? 1 : 0;
}
