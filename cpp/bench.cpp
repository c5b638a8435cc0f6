#include "bench.h"

#include <chrono>
#include <cmath>
#include <cstdio>
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

// Fills to the depth, generates `warm` untimed tokens, then times the test.
static double bench_once(context& ctx, const bench_test& t, std::mt19937& rng, int warm) {
    const int n_vocab = ctx.mdl().hp().n_vocab;
    std::uniform_int_distribution<int> pick(0, n_vocab - 1);
    ctx.reset();
    if (t.depth > 0) {
        std::vector<int32_t> fill(t.depth);
        for (auto& x : fill) x = pick(rng);
        ctx.eval(fill.data(), t.depth, nullptr, 0);
    }
    std::vector<float> logits(n_vocab);
    for (int i = 0; i < warm; ++i) {
        const int32_t tok = pick(rng);
        ctx.eval(&tok, 1, logits.data(), 1);
    }
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
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return n / s;
}

// Untimed tokens after the fill: a tg test at a depth warms up there.
static int warm_tokens(const bench_test& t) {
    return t.depth > 0 && t.n_prompt == 0 ? kBenchWarmTokens : 0;
}

int bench_tokens_needed(const bench_test& t) { return t.depth + std::max(t.n_prompt, t.n_gen) + warm_tokens(t); }

bench_result bench_run(context& ctx, const bench_test& test, int reps, unsigned seed) {
    const int need = bench_tokens_needed(test);
    if (need > ctx.n_ctx())
        throw error("bench: " + test.name + " needs a context of " + std::to_string(need) +
                    " tokens, have " + std::to_string(ctx.n_ctx()));
    std::mt19937 rng(seed);
    bench_result r;
    r.test = test;
    const int warm = warm_tokens(test);
    if (!warm) bench_once(ctx, test, rng, 0);  // warm-up: page in weights, size buffers
    for (int i = 0; i < reps; ++i) r.samples.push_back(bench_once(ctx, test, rng, warm));
    return r;
}

}  // namespace kvrt

namespace kvrt {

bench_output bench_output_from_name(const std::string& name) {
    if (name == "md") return BENCH_OUTPUT_MD;
    if (name == "csv") return BENCH_OUTPUT_CSV;
    if (name == "json") return BENCH_OUTPUT_JSON;
    throw error("bench: unknown output format '" + name + "' (md, csv, json)");
}

// A JSON string literal (the names printed are plain ASCII).
static std::string quoted(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    return out + "\"";
}

static std::string csv_quoted(const std::string& s) {
    std::string out = "\"";
    for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
    return out + "\"";
}

void bench_print_header(bench_output o) {
    if (o == BENCH_OUTPUT_MD) {
        std::printf("| model | size | params | backend | threads | kv | test | t/s |\n");
        std::printf("| ----- | ---: | -----: | ------- | ------: | -- | ---: | --: |\n");
    } else if (o == BENCH_OUTPUT_CSV) {
        std::printf(
            "model,size,params,backend,n_threads,type_k,type_v,kv,n_ctx,kv_bytes,"
            "kv_bytes_per_token,bits_per_element,test,n_prompt,n_gen,n_depth,avg_ts,"
            "stddev_ts\n");
    } else {
        std::printf("[\n");
    }
    std::fflush(stdout);
}

void bench_print_row(bench_output o, const bench_row& r, bool first) {
    const bench_result& b = r.result;
    const double per_token = r.n_ctx ? (double)r.kv_bytes / r.n_ctx : 0.0;
    if (o == BENCH_OUTPUT_MD) {
        std::printf("| %s | %s | %s | %s | %d | %s | %s | %.2f ± %.2f |\n", r.model.c_str(),
                    r.size.c_str(), r.params.c_str(), r.backend.c_str(), r.threads, r.kv.c_str(),
                    b.test.name.c_str(), b.mean(), b.sd());
    } else if (o == BENCH_OUTPUT_CSV) {
        std::printf("%s,%s,%s,%s,%d,%s,%s,%s,%d,%zu,%.2f,%.4f,%s,%d,%d,%d,%.4f,%.4f\n",
                    csv_quoted(r.model).c_str(), csv_quoted(r.size).c_str(),
                    csv_quoted(r.params).c_str(), csv_quoted(r.backend).c_str(), r.threads,
                    csv_quoted(r.type_k).c_str(), csv_quoted(r.type_v).c_str(),
                    csv_quoted(r.kv).c_str(), r.n_ctx, r.kv_bytes, per_token, r.bits_per_element,
                    csv_quoted(b.test.name).c_str(), b.test.n_prompt, b.test.n_gen, b.test.depth,
                    b.mean(), b.sd());
    } else {
        std::string samples;
        for (size_t i = 0; i < b.samples.size(); ++i) {
            char buf[32];
            std::snprintf(buf, sizeof buf, "%s%.4f", i ? ", " : "", b.samples[i]);
            samples += buf;
        }
        std::printf(
            "%s  {\"model\": %s, \"size\": %s, \"params\": %s, \"backend\": %s, "
            "\"n_threads\": %d, \"type_k\": %s, \"type_v\": %s, \"kv\": %s, "
            "\"n_ctx\": %d, \"kv_bytes\": %zu, \"kv_bytes_per_token\": %.2f, "
            "\"bits_per_element\": %.4f, \"test\": %s, \"n_prompt\": %d, \"n_gen\": %d, "
            "\"n_depth\": %d, \"avg_ts\": %.4f, \"stddev_ts\": %.4f, "
            "\"samples_ts\": [%s]}",
            first ? "" : ",\n", quoted(r.model).c_str(), quoted(r.size).c_str(),
            quoted(r.params).c_str(), quoted(r.backend).c_str(), r.threads,
            quoted(r.type_k).c_str(), quoted(r.type_v).c_str(), quoted(r.kv).c_str(), r.n_ctx,
            r.kv_bytes, per_token, r.bits_per_element, quoted(b.test.name).c_str(), b.test.n_prompt,
            b.test.n_gen, b.test.depth, b.mean(), b.sd(), samples.c_str());
    }
    std::fflush(stdout);
}

void bench_print_footer(bench_output o, const std::vector<bench_row>& rows) {
    if (o == BENCH_OUTPUT_JSON) {
        std::printf("\n]\n");
    } else if (o == BENCH_OUTPUT_MD) {
        // One line per format: the KV bytes column of the markdown output
        // (kept apart so the speed table keeps llama-bench's columns).
        std::printf("\n| kv | n_ctx | KV bytes | KV bytes/token | bits/element |\n");
        std::printf("| -- | ----: | -------: | -------------: | -----------: |\n");
        std::string last;
        for (const auto& r : rows) {
            if (r.kv == last) continue;
            last = r.kv;
            std::printf("| %s | %d | %zu | %.1f | %.2f |\n", r.kv.c_str(), r.n_ctx, r.kv_bytes,
                        r.n_ctx ? (double)r.kv_bytes / r.n_ctx : 0.0, r.bits_per_element);
        }
    }
    std::fflush(stdout);
}

}  // namespace kvrt
