// The packed-KV kernels (AVX2 or NEON) against their scalar twins on random
// codes of every width 1..8, 1..5 query rows and awkward channel counts.
// Prints one PASS/FAIL line per case, "ok" at the end; exit status 1 if any
// case fails. Tolerance: the paths sum the same products in another order,
// so |simd - ref| <= 1e-5 * (1 + sum |w * code|).
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cpu/kv_kernels.h"
#include "kv_layout.h"
#include "quants.h"

using namespace kvrt;

namespace {

int g_failed = 0;

void report(bool ok, const std::string& what) {
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
    if (!ok) ++g_failed;
}

// A block of n_ch channel groups with random widths (or all `bits`).
std::vector<uint8_t> random_block(std::mt19937& rng, int n_ch, int bits, std::vector<uint8_t>& widths) {
    widths.resize(n_ch);
    std::vector<uint8_t> blk;
    for (int c = 0; c < n_ch; ++c) {
        widths[c] = (uint8_t)(bits > 0 ? bits : 1 + rng() % 8);
        uint8_t codes[32];
        for (int i = 0; i < 32; ++i) codes[i] = (uint8_t)(rng() % (1u << widths[c]));
        std::vector<uint8_t> g(kv_group_bytes(widths[c]));
        kv_pack32(codes, widths[c], g.data());
        // Round trip of the packing itself.
        uint8_t back[32];
        kv_unpack32(g.data(), widths[c], back);
        for (int i = 0; i < 32; ++i)
            if (back[i] != codes[i]) report(false, "pack/unpack bits=" + std::to_string(widths[c]));
        blk.insert(blk.end(), g.begin(), g.end());
    }
    return blk;
}

}  // namespace

int main() {
    std::printf("simd=%s\n", kv_kernels_simd_name());
    std::mt19937 rng(42);
    std::normal_distribution<float> nd;
    for (int bits = 0; bits <= 8; ++bits)        // 0: mixed widths
        for (int n_ch : {1, 7, 31, 32, 33, 64, 129})
            for (int n_rep = 1; n_rep <= 5; ++n_rep) {
                std::vector<uint8_t> widths;
                const std::vector<uint8_t> blk = random_block(rng, n_ch, bits, widths);
                std::vector<float> w((size_t)n_rep * n_ch), p((size_t)n_rep * 32);
                for (auto& v : w) v = nd(rng);
                for (auto& v : p) v = std::fabs(nd(rng));
                std::vector<float> s(n_rep * 32), s_ref(n_rep * 32);
                kv_cmajor_scores(blk.data(), widths.data(), n_ch, w.data(), n_rep, s.data());
                kv_cmajor_scores_ref(blk.data(), widths.data(), n_ch, w.data(), n_rep, s_ref.data());
                double worst = 0, scale = 1;
                for (int r = 0; r < n_rep; ++r)
                    for (int c = 0; c < n_ch; ++c) scale += std::fabs(w[r * n_ch + c]) * 255;
                for (int i = 0; i < n_rep * 32; ++i) worst = std::max(worst, (double)std::fabs(s[i] - s_ref[i]));
                const std::string tag = " bits=" + std::to_string(bits) + " n_ch=" +
                                        std::to_string(n_ch) + " n_rep=" + std::to_string(n_rep);
                report(worst <= 1e-5 * scale, "scores" + tag);
                std::vector<float> a((size_t)n_rep * n_ch, 0.5f), a_ref = a;
                kv_cmajor_accumulate(blk.data(), widths.data(), n_ch, p.data(), n_rep, a.data(), n_ch);
                kv_cmajor_accumulate_ref(blk.data(), widths.data(), n_ch, p.data(), n_rep, a_ref.data(), n_ch);
                worst = 0;
                for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, (double)std::fabs(a[i] - a_ref[i]));
                report(worst <= 1e-5 * (1 + 32 * 255 * 4), "accumulate" + tag);
                float u[32], u_ref[32];
                kv_unpack32_f32(blk.data(), widths[0], u);
                kv_unpack32_f32_ref(blk.data(), widths[0], u_ref);
                bool same = true;
                for (int i = 0; i < 32; ++i) same = same && u[i] == u_ref[i];
                report(same, "unpack" + tag);
            }
    // Runs of 32 positions against per-position tables (the pca keys'
    // turning mean), 1..5 rows and table counts up to 64.
    for (int k : {1, 2, 7, 64})
        for (int n_rep = 1; n_rep <= 5; ++n_rep) {
            std::vector<float> w((size_t)n_rep * k), tab((size_t)k * 32);
            for (auto& v : w) v = nd(rng);
            for (auto& v : tab) v = nd(rng);
            std::vector<float> s(n_rep * 32), s_ref(n_rep * 32);
            kv_run_scores(w.data(), k, tab.data(), n_rep, s.data());
            kv_run_scores_ref(w.data(), k, tab.data(), n_rep, s_ref.data());
            double worst = 0, scale = 1;
            for (float v : w) scale += std::fabs(v) * 4;
            for (int i = 0; i < n_rep * 32; ++i) worst = std::max(worst, (double)std::fabs(s[i] - s_ref[i]));
            report(worst <= 1e-5 * scale, "run_scores k=" + std::to_string(k) + " n_rep=" + std::to_string(n_rep));
        }
    // The pca token scale's byte code: the value is the smallest code value
    // at or above a (never below: the token's channels stay in range),
    // codes run in order, and every code decodes to itself.
    {
        bool ok = true;
        for (int c = 0; c < 256; ++c) {
            const float v = kv_pca_scale_value((uint8_t)c);
            ok = ok && kv_pca_scale_code(v) == c;
            if (c > 0) ok = ok && v > kv_pca_scale_value((uint8_t)(c - 1));
        }
        std::uniform_real_distribution<float> lg(-9.0f, 9.5f);
        for (int i = 0; i < 100000 && ok; ++i) {
            const float a = std::exp2(lg(rng));
            const int c = kv_pca_scale_code(a);
            const float v = kv_pca_scale_value((uint8_t)c);
            if (a <= kv_pca_scale_value(0)) ok = c == 0;
            else if (a > kv_pca_scale_value(255)) ok = c == 255;
            else ok = v >= a && kv_pca_scale_value((uint8_t)(c - 1)) < a && v <= a * 1.0625f;
        }
        report(ok, "pca scale code");
    }
    // Softmax numerators: the vector exp against std::exp over the range
    // scores take (down to far below anything a softmax keeps), every length
    // from 1 to 40 so each tail is exercised.
    std::uniform_real_distribution<float> ud(-120.0f, 0.0f);
    for (int n = 1; n <= 40; ++n) {
        std::vector<float> x(n);
        for (auto& v : x) v = ud(rng) + 3.0f;
        x[rng() % n] = 3.0f;  // the largest, as after a max
        std::vector<float> ref = x;
        const float m = kv_max(x.data(), n);
        const float l = kv_softmax_exp(x.data(), n, m);
        const float l_ref = kv_softmax_exp_ref(ref.data(), n, m);
        bool ok = m == 3.0f && std::fabs(l - l_ref) <= 1e-6f * l_ref;
        for (int j = 0; j < n; ++j) ok = ok && std::fabs(x[j] - ref[j]) <= 2e-7f * ref[j] + 2e-38f;
        report(ok, "softmax_exp n=" + std::to_string(n));
    }
    std::printf(g_failed ? "%d FAILED\n" : "ok\n", g_failed);
    return g_failed ? 1 : 0;
}
