#include <cstdio>

#include "bench.h"
#include "cli.h"
#include "quants.h"

namespace kvrt {

int cli_bench(int argc, char** argv) {
    std::vector<cli_option> opts = cli_model_options();
    opts.push_back({{"-p", "--n-prompt"}, "N[,N..]", "prompt sizes (0 to skip)", "512"});
    opts.push_back({{"-n", "--n-gen"}, "N[,N..]", "generation lengths (0 to skip)", "128"});
    opts.push_back({{"-d", "--n-depth"}, "N[,N..]", "tokens in the cache before each test", "0"});
    opts.push_back({{"-r", "--repetitions"}, "N", "repetitions per test", "5"});
    cli_args a("bench", opts, argc, argv);
    if (a.help()) {
        std::printf("Prompt processing and generation speed, llama-bench style.\n\n%s",
                    a.usage().c_str());
        return 0;
    }
    const std::string model_path = cli_model_path(a);
    const auto prompts = a.int_list("-p", 512, 0, 1 << 20);
    const auto gens = a.int_list("-n", 128, 0, 1 << 20);
    const auto depths = a.int_list("-d", 0, 0, 1 << 24);
    const int reps = (int)a.integer("-r", 5, 1, 1000);

    std::vector<bench_test> tests;
    long long need = 0;
    for (long long d : depths) {
        const std::string at = d > 0 ? " @ d" + std::to_string(d) : "";
        for (long long p : prompts)
            if (p > 0) tests.push_back({"pp" + std::to_string(p) + at, (int)p, 0, (int)d});
        for (long long g : gens)
            if (g > 0) tests.push_back({"tg" + std::to_string(g) + at, 0, (int)g, (int)d});
        for (long long p : prompts) need = std::max(need, d + p);
        for (long long g : gens) need = std::max(need, d + g);
    }
    if (tests.empty()) throw error("bench: nothing to run (-p and -n are both 0)");

    auto m = model::load(model_path);
    context_params cp = cli_context_params(a, (int)need);
    context ctx(*m, cp);
    std::fprintf(stderr, "%s\n", ctx.kv().summary_line().c_str());

    uint64_t file_bytes = 0, n_params = 0;
    for (const auto& t : m->file().tensors()) {
        file_bytes += t.nbytes;
        n_params += (uint64_t)t.nelements();
    }
    const gguf_tensor* q = m->file().tensor("blk.0.attn_q.weight");
    char model_name[96], size[32], params[32];
    std::snprintf(model_name, sizeof model_name, "%s %s", m->hp().arch_name.c_str(),
                  q ? ggml_type_geometry(q->type).name : "?");
    std::snprintf(size, sizeof size, "%.2f MiB", file_bytes / 1048576.0);
    std::snprintf(params, sizeof params, "%.2f M", n_params / 1e6);

    std::printf("| model | size | params | backend | threads | kv | test | t/s |\n");
    std::printf("| ----- | ---: | -----: | ------- | ------: | -- | ---: | --: |\n");
    for (const auto& t : tests) {
        bench_result r = bench_run(ctx, t, reps, 1234);
        std::printf("| %s | %s | %s | CPU (%s) | %d | %s | %s | %.2f ± %.2f |\n", model_name, size,
                    params, quants_simd_name(), ctx.n_threads(), ctx.kv().format_name().c_str(),
                    t.name.c_str(), r.mean(), r.sd());
        std::fflush(stdout);
    }
    return 0;
}

}  // namespace kvrt
