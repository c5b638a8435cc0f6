#include <chrono>
#include <cstdio>

#include "cli.h"
#include "perplexity.h"

namespace kvrt {

int cli_perplexity(int argc, char** argv) {
    std::vector<cli_option> opts = cli_model_options();
    opts.push_back({{"-f", "--file"}, "FILE", "text to score", ""});
    opts.push_back({{"--chunks"}, "N", "score at most N chunks", "all"});
    cli_args a("perplexity", opts, argc, argv);
    if (a.help()) {
        std::printf("Perplexity of a model over a text file, llama-perplexity's protocol:\n"
                    "chunks of -c tokens, second half of each chunk scored.\n\n%s",
                    a.usage().c_str());
        return 0;
    }
    const std::string model_path = cli_model_path(a);
    if (!a.has("-f")) throw error("perplexity: a text file is required (-f FILE)");
    const int n_chunks = (int)a.integer("--chunks", 0, 1, 1 << 30);
    const std::string text = cli_read_file(a.str("-f"));
    context_params cp = cli_context_params(a, 512);

    auto t0 = std::chrono::steady_clock::now();
    auto m = model::load(model_path);
    std::fprintf(stderr, "model: %s (%s)\n", model_path.c_str(), m->describe().c_str());
    std::vector<int32_t> tokens = m->vocab().encode(text, true, false);
    std::fprintf(stderr, "tokenized %zu tokens in %.2f s\n", tokens.size(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    perplexity_require_tokens(tokens.size(), cp.n_ctx);
    context ctx(*m, cp);
    std::fprintf(stderr, "%s\n", ctx.kv().summary_line().c_str());
    if (ctx.device() == DEVICE_CUDA) std::fprintf(stderr, "%s\n", ctx.device_description().c_str());
    const int n_max = (int)(tokens.size() / ctx.n_ctx());
    std::fprintf(stderr, "perplexity: %d chunks, n_ctx=%d, %d threads\n",
                 n_chunks > 0 ? std::min(n_chunks, n_max) : n_max, ctx.n_ctx(), ctx.n_threads());
    auto t1 = std::chrono::steady_clock::now();
    perplexity_result r = perplexity_compute(ctx, tokens, n_chunks, [&](int i, double ppl) {
        std::printf("[%d]%.4f,", i + 1, ppl);
        std::fflush(stdout);
    });
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    std::printf("\n");
    std::fflush(stdout);
    std::fprintf(stderr, "evaluated %lld tokens in %.2f s (%.1f tokens/s)\n",
                 (long long)r.n_chunks * ctx.n_ctx(), secs, r.n_chunks * ctx.n_ctx() / secs);
    std::printf("Final estimate: PPL = %.4f +/- %.5f\n", r.ppl, r.ppl_err);
    return 0;
}

}  // namespace kvrt
