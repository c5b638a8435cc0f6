#include <cstdio>
#include <sstream>

#include "bench.h"
#include "cli.h"
#include "quants.h"

namespace kvrt {

namespace {

// KV format lists of bench: --kv, -ctk and -ctv take comma-separated lists
// and may be repeated (llama-bench's convention); the values are collected
// here and the options removed before the shared parser sees them.
struct kv_lists {
    std::vector<std::string> both, k, v;
};

std::vector<std::string> split_names(const std::string& s, const std::string& option) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) out.push_back(item);
    if (out.empty()) throw error("option " + option + ": empty list");
    return out;
}

std::vector<char*> take_kv_options(int argc, char** argv, kv_lists* kv) {
    std::vector<char*> rest;
    for (int i = 0; i < argc; ++i) {
        std::string a = argv[i], value;
        const size_t eq = a.rfind("--", 0) == 0 ? a.find('=') : std::string::npos;
        if (eq != std::string::npos) {
            value = a.substr(eq + 1);
            a = a.substr(0, eq);
        }
        std::vector<std::string>* dst = a == "--kv"                            ? &kv->both
                                        : a == "-ctk" || a == "--cache-type-k" ? &kv->k
                                        : a == "-ctv" || a == "--cache-type-v" ? &kv->v
                                                                               : nullptr;
        if (!dst) {
            rest.push_back(argv[i]);
            continue;
        }
        if (eq == std::string::npos) {
            if (i + 1 >= argc) throw error("option '" + a + "' needs a value TYPE[,TYPE..]");
            value = argv[++i];
        }
        for (auto& n : split_names(value, a)) dst->push_back(n);
    }
    return rest;
}

// The (keys, values) pairs to measure: --kv names apply to both; -ctk and -ctv
// lists are crossed, each defaulting to the --kv list, else f16.
std::vector<std::pair<std::string, std::string>> kv_pairs(const kv_lists& kv) {
    std::vector<std::pair<std::string, std::string>> out;
    if (kv.k.empty() && kv.v.empty()) {
        for (const auto& n : kv.both.empty() ? std::vector<std::string>{"f16"} : kv.both)
            out.push_back({n, n});
        return out;
    }
    const std::vector<std::string> dflt =
        kv.both.empty() ? std::vector<std::string>{"f16"} : kv.both;
    for (const auto& k : kv.k.empty() ? dflt : kv.k)
        for (const auto& v : kv.v.empty() ? dflt : kv.v) out.push_back({k, v});
    return out;
}

}  // namespace

int cli_bench(int argc, char** argv) {
    std::vector<cli_option> opts = cli_model_options();
    for (auto& o : opts) {
        if (o.names[0] == "--kv") o.help = "KV cache formats of keys and values, one row set each";
        if (o.names[0] == "-ctk") o.help = "KV cache formats of keys (crossed with -ctv)";
        if (o.names[0] == "-ctv") o.help = "KV cache formats of values";
        if (o.names[0] == "--kv" || o.names[0] == "-ctk" || o.names[0] == "-ctv")
            o.value = "TYPE[,TYPE..]";
    }
    opts.push_back({{"-p", "--n-prompt"}, "N[,N..]", "prompt sizes (0 to skip)", "512"});
    opts.push_back({{"-n", "--n-gen"}, "N[,N..]", "generation lengths (0 to skip)", "128"});
    opts.push_back({{"-d", "--n-depth"}, "N[,N..]", "tokens in the cache before each test", "0"});
    opts.push_back({{"-r", "--repetitions"}, "N", "repetitions per test", "5"});
    opts.push_back({{"-o", "--output"}, "md|csv|json", "output format", "md"});
    kv_lists kv;
    std::vector<char*> rest = take_kv_options(argc, argv, &kv);
    cli_args a("bench", opts, (int)rest.size(), rest.data());
    if (a.help()) {
        std::printf(
            "Prompt processing and generation speed per KV cache format, llama-bench "
            "style.\n\n%s",
            a.usage().c_str());
        return 0;
    }
    const std::string model_path = cli_model_path(a);
    const auto prompts = a.int_list("-p", 512, 0, 1 << 20);
    const auto gens = a.int_list("-n", 128, 0, 1 << 20);
    const auto depths = a.int_list("-d", 0, 0, 1 << 24);
    const int reps = (int)a.integer("-r", 5, 1, 1000);
    const bench_output output = bench_output_from_name(a.str("-o", "md"));
    const auto pairs = kv_pairs(kv);
    for (const auto& p : pairs) {  // every name checked before the first run
        kv_type_from_name(p.first);
        kv_type_from_name(p.second);
    }

    std::vector<bench_test> tests;
    long long need = 0;
    for (long long d : depths) {
        const std::string at = d > 0 ? " @ d" + std::to_string(d) : "";
        for (long long p : prompts)
            if (p > 0) tests.push_back({"pp" + std::to_string(p) + at, (int)p, 0, (int)d});
        for (long long g : gens)
            if (g > 0) tests.push_back({"tg" + std::to_string(g) + at, 0, (int)g, (int)d});
    }
    for (const auto& t : tests) need = std::max(need, (long long)bench_tokens_needed(t));
    if (tests.empty()) throw error("bench: nothing to run (-p and -n are both 0)");

    auto m = model::load(model_path);
    uint64_t file_bytes = 0, n_params = 0;
    for (const auto& t : m->file().tensors()) {
        file_bytes += t.nbytes;
        n_params += (uint64_t)t.nelements();
    }
    const gguf_tensor* q = m->file().tensor("blk.0.attn_q.weight");
    char buf[96];
    bench_row row;
    std::snprintf(buf, sizeof buf, "%s %s", m->hp().arch_name.c_str(),
                  q ? ggml_type_geometry(q->type).name : "?");
    row.model = buf;
    std::snprintf(buf, sizeof buf, "%.2f MiB", file_bytes / 1048576.0);
    row.size = buf;
    std::snprintf(buf, sizeof buf, "%.2f M", n_params / 1e6);
    row.params = buf;
    row.backend = std::string("CPU (") + quants_simd_name() + ")";

    bench_print_header(output);
    std::vector<bench_row> rows;
    for (const auto& p : pairs) {
        context_params cp = cli_context_params(a, (int)need);
        cp.type_k = kv_type_from_name(p.first);
        cp.type_v = kv_type_from_name(p.second);
        context ctx(*m, cp);
        std::fprintf(stderr, "%s\n", ctx.kv().summary_line().c_str());
        if (ctx.device() == DEVICE_CUDA) std::fprintf(stderr, "%s\n", ctx.device_description().c_str());
        row.threads = ctx.n_threads();
        if (ctx.device() == DEVICE_CUDA) row.backend = "CUDA";
        row.type_k = p.first;
        row.type_v = p.second;
        row.kv = ctx.kv().format_name();
        row.n_ctx = ctx.n_ctx();
        row.kv_bytes = ctx.kv().bytes();
        row.bits_per_element = ctx.kv().bits_per_element();
        for (const auto& t : tests) {
            row.result = bench_run(ctx, t, reps, 1234);
            bench_print_row(output, row, rows.empty());
            rows.push_back(row);
        }
    }
    bench_print_footer(output, rows);
    return 0;
}

}  // namespace kvrt
