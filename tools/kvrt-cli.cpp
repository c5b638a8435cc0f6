// kvrt-cli: thin main over the engine's subcommands (cpp/cli_*.cpp).
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "cli.h"

static void print_usage(FILE* out) {
    std::fprintf(out,
                 "usage: kvrt-cli <command> [options]\n\n"
                 "commands:\n"
                 "  perplexity   perplexity of a model over a text file\n"
                 "  bench        prompt-processing and generation speed\n"
                 "  run          generate text from a prompt\n"
                 "  chat         interactive chat with a chat model\n\n"
                 "Run 'kvrt-cli <command> --help' for a command's options.\n");
}

int main(int argc, char** argv) {
    if (argc < 2) {
        print_usage(stderr);
        return 2;
    }
    const std::string cmd = argv[1];
    if (cmd == "-h" || cmd == "--help" || cmd == "help") {
        print_usage(stdout);
        return 0;
    }
    try {
        if (cmd == "perplexity") return kvrt::cli_perplexity(argc - 2, argv + 2);
        if (cmd == "bench") return kvrt::cli_bench(argc - 2, argv + 2);
        if (cmd == "run") return kvrt::cli_run(argc - 2, argv + 2);
        if (cmd == "chat") return kvrt::cli_chat(argc - 2, argv + 2);
        std::fprintf(stderr, "kvrt-cli: unknown command '%s' (see kvrt-cli --help)\n", cmd.c_str());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "kvrt-cli: error: %s\n", e.what());
        return 1;
    }
}
