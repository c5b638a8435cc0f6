// Throughput benchmark in the manner of llama-bench: prompt processing
// (pp<N>: N random tokens in one batch) and text generation (tg<N>: N tokens
// one at a time), optionally after filling the cache to a depth first
// (untimed), each repeated and reported as mean and standard deviation of
// tokens per second.
#pragma once

#include <string>
#include <vector>

#include "context.h"

namespace kvrt {

struct bench_test {
    std::string name;  // "pp512", "tg128", "tg128 @ d4096"
    int n_prompt = 0;  // pp test when > 0
    int n_gen = 0;     // tg test when > 0
    int depth = 0;
};

struct bench_result {
    bench_test test;
    std::vector<double> samples;  // tokens per second, one per repetition
    double mean() const;
    double sd() const;
};

// Runs one test `reps` times after one untimed warm-up run.
bench_result bench_run(context& ctx, const bench_test& test, int reps, unsigned seed);

}  // namespace kvrt
