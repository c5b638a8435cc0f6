#include "bench.h"

#include <chrono>
#include <cmath>
#include <random>

namespace kvrt {

double bench_result::mean() const {
    double s = 0.0;
    for (double x : samples) s += x;
    return samples.empty() ? 0.0 : s / samples.size();
}

double bench_result::sd() const {
    if (samples.size() < 2) return 0.0;
    const double m = mean();
    double s = 0.0;
    for (double x : samples) s += (x - m) * (x - m);
    return std::sqrt(s / (samples.size() - 1));
}

static double bench_once(context& ctx, const bench_test& t, std::mt19937& rng) {
    const int n_vocab = ctx.mdl().hp().n_vocab;
    std::uniform_int_distribution<int> pick(0, n_vocab - 1);
    ctx.reset();
    if (t.depth > 0) {
        std::vector<int32_t> fill(t.depth);
        for (auto& x : fill) x = pick(rng);
        ctx.eval(fill.data(), t.depth, nullptr, 0);
    }
    std::vector<float> logits(n_vocab);
    const auto start = std::chrono::steady_clock::now();
    int n = 0;
    if (t.n_prompt > 0) {
        std::vector<int32_t> prompt(t.n_prompt);
        for (auto& x : prompt) x = pick(rng);
        ctx.eval(prompt.data(), t.n_prompt, logits.data(), 1);
        n = t.n_prompt;
    } else {
        int32_t tok = pick(rng);
        for (int i = 0; i < t.n_gen; ++i) {
            ctx.eval(&tok, 1, logits.data(), 1);
            tok = pick(rng);
        }
        n = t.n_gen;
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return n / s;
}

bench_result bench_run(context& ctx, const bench_test& test, int reps, unsigned seed) {
    const int need = test.depth + std::max(test.n_prompt, test.n_gen);
    if (need > ctx.n_ctx())
        throw error("bench: " + test.name + " needs a context of " + std::to_string(need) +
                    " tokens, have " + std::to_string(ctx.n_ctx()));
    std::mt19937 rng(seed);
    bench_result r;
    r.test = test;
    bench_once(ctx, test, rng);  // warm-up: page in weights, size buffers
    for (int i = 0; i < reps; ++i) r.samples.push_back(bench_once(ctx, test, rng));
    return r;
}

}  // namespace kvrt
