// kvrt-cli run: generate text from a prompt, streaming it to stdout
// (llama-cli / llama-simple's flags and sampling defaults).
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "cli.h"
#include "generate.h"

namespace kvrt {

// --stop may repeat; cli_args keeps one value per option, so collect them here
// and hand cli_args the rest.
static std::vector<std::string> cli_take_repeated(const std::string& name, int& argc, char** argv) {
    std::vector<std::string> values;
    int w = 0;
    for (int i = 0; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == name) {
            if (i + 1 >= argc) throw error("option '" + name + "' needs a value S");
            values.push_back(argv[++i]);
        } else if (a.rfind(name + "=", 0) == 0) {
            values.push_back(a.substr(name.size() + 1));
        } else {
            argv[w++] = argv[i];
        }
    }
    argc = w;
    return values;
}

static double cli_peak_rss_mib() {
    struct rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;  // Linux reports KiB
}

int cli_run(int argc, char** argv) {
    std::vector<cli_option> opts = cli_model_options();
    opts.push_back(
        {{"-p", "--prompt"}, "TEXT", "prompt (special tokens like <|im_start|> parsed)", ""});
    opts.push_back({{"-f", "--file"}, "FILE", "read the prompt from a file", ""});
    opts.push_back(
        {{"-n", "--n-predict"}, "N", "tokens to generate, -1 = until the context is full", "128"});
    for (const cli_option& o : cli_sampler_options()) opts.push_back(o);
    opts.push_back({{"--stop"}, "S", "stop when S appears (not printed); may repeat", ""});

    // Copy argv so the repeated-option filter does not touch the caller's.
    std::vector<char*> args(argv, argv + argc);
    int n_args = argc;
    std::vector<std::string> stop = cli_take_repeated("--stop", n_args, args.data());
    cli_args a("run", opts, n_args, args.data());
    if (a.help()) {
        std::printf(
            "Generate text from a prompt, streamed to stdout; speeds and memory on\n"
            "stderr.\n\n%s",
            a.usage().c_str());
        return 0;
    }
    if (a.has("-p") == a.has("-f"))
        throw error("run: give a prompt with -p TEXT or -f FILE (one of them)");
    const std::string prompt = a.has("-p") ? a.str("-p") : cli_read_file(a.str("-f"));

    generate_params gp;
    gp.max_tokens = (int)a.integer("-n", 128, -1, 1 << 30);
    gp.stop = stop;
    gp.sampling = cli_sampler_params(a);
    context_params cp = cli_context_params(a, 0);
    const std::string model_path = cli_model_path(a);

    auto m = model::load(model_path);
    std::vector<int32_t> tokens = m->vocab().encode(prompt, true, true);
    // Check before allocating the context: a fitting cache may be large.
    const int n_ctx = cp.n_ctx > 0 ? cp.n_ctx : 0;
    if (n_ctx > 0 && (long long)tokens.size() > n_ctx)
        throw error("run: the prompt is " + std::to_string(tokens.size()) +
                    " tokens, longer than the context (-c " + std::to_string(n_ctx) + ")");
    context ctx(*m, cp);
    generator gen(ctx, tokens, gp);
    // Printed after the checks so that bad input gives one line on stderr.
    std::fprintf(stderr, "model: %s (%s)\n", model_path.c_str(), m->describe().c_str());
    std::fprintf(stderr, "run: %zu prompt tokens, n_ctx=%d, %d threads, seed %u\n", tokens.size(),
                 ctx.n_ctx(), ctx.n_threads(), gen.seed());

    std::string piece;
    bool more = true;
    while (more) {
        piece.clear();
        more = gen.next(piece);
        if (!piece.empty()) {
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
        }
    }
    std::printf("\n");
    std::fflush(stdout);

    const generate_stats& st = gen.stats();
    if (gen.stop_reason() == GENERATE_STOP_CONTEXT)
        std::fprintf(stderr, "run: stopped: the context is full (%d tokens); raise -c\n",
                     ctx.n_ctx());
    else
        std::fprintf(stderr, "run: stopped: %s\n", generate_stop_name(gen.stop_reason()));
    std::fprintf(stderr, "prompt: %d tokens in %.3f s (%.1f tokens/s)\n", st.n_prompt, st.t_prompt,
                 st.prompt_tps());
    std::fprintf(stderr, "generation: %zu tokens, %d decoded in %.3f s (%.1f tokens/s)\n",
                 gen.tokens().size(), st.n_decode, st.t_decode, st.decode_tps());
    std::fprintf(stderr, "%s\n", ctx.kv().summary_line().c_str());
    if (ctx.device() == DEVICE_CUDA) std::fprintf(stderr, "%s\n", ctx.device_description().c_str());
    std::fprintf(stderr, "peak memory: %.1f MiB\n", cli_peak_rss_mib());
    return 0;
}

}  // namespace kvrt
