// Throughput benchmark in the manner of llama-bench: prompt processing
// (pp<N>: N random tokens in one batch) and text generation (tg<N>: N tokens
// one at a time), optionally after filling the cache to a depth first
// (untimed), each repeated and reported as mean and standard deviation of
// tokens per second.
#pragma once

#include <cstddef>
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

// Runs one test `reps` times after one untimed warm-up run. A tg test at a
// depth takes no separate warm-up run (it would fill the cache once more):
// each repetition fills, then generates kBenchWarmTokens untimed tokens
// (weights paged in, buffers sized, decode graphs captured) before the timed
// ones.
bench_result bench_run(context& ctx, const bench_test& test, int reps, unsigned seed);

constexpr int kBenchWarmTokens = 2;

// Positions the cache needs for a test.
int bench_tokens_needed(const bench_test& test);

// One printed row: what was measured and on what.
struct bench_row {
    std::string model, size, params, backend;  // as shown in the markdown table
    int threads = 0;
    std::string type_k, type_v, kv;  // kv: the cache's own name ("f16", "k=q8_0,v=f16")
    int n_ctx = 0;                   // tokens the cache was allocated for
    size_t kv_bytes = 0;             // allocated for n_ctx tokens, from the allocator
    double bits_per_element = 0;
    bench_result result;
};

enum bench_output { BENCH_OUTPUT_MD, BENCH_OUTPUT_CSV, BENCH_OUTPUT_JSON };

// Parses "md", "csv", "json"; throws kvrt::error otherwise.
bench_output bench_output_from_name(const std::string& name);
// Rows are printed as they come (a long run shows progress); md adds a table
// of KV cache sizes per format after the last row, json closes its array.
void bench_print_header(bench_output o);
void bench_print_row(bench_output o, const bench_row& r, bool first);
void bench_print_footer(bench_output o, const std::vector<bench_row>& rows);

}  // namespace kvrt
